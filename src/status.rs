//! Status of a JobRetry: pure builders (result rows, counts, the size rule, conditions) and
//! one server-side-apply writer that skips no-op patches and never writes on another object
//! of the same name. Which phase and conditions a run has is the state machine's
//! (`controller::machine`).
//!
//! Guarantees: counts stay exact however many rows are dropped; a condition's
//! `lastTransitionTime` changes only when its status flips; `observedGeneration` is set;
//! every string copied from Redis is cut at a character boundary to its documented length,
//! and no status larger than [`STATUS_BYTES`] serialized is ever written.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;

use crate::{
    bullmq::JobOutcome,
    crd::{JobResult, JobResultRow, JobRetry, JobRetryStatus, Preview, ValueCount},
};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "jobretry-operator";

/// The result of one job's outcome. A ledger hit written by this same run (`RetriedEarlier`)
/// is the job's own earlier result, seen again after a crash: `Retried`.
pub fn result_of(outcome: &JobOutcome) -> JobResult {
    match outcome {
        JobOutcome::Retried | JobOutcome::RetriedEarlier => JobResult::Retried,
        JobOutcome::WouldRetry => JobResult::WouldRetry,
        JobOutcome::NotFound => JobResult::NotFound,
        JobOutcome::NotInState => JobResult::NotInState,
        JobOutcome::AlreadyProcessed { .. } => JobResult::AlreadyProcessed,
        JobOutcome::Error(_) => JobResult::Error,
        JobOutcome::Parked => JobResult::Parked,
    }
}

/// The status row of one job retried from `state`: its [`result_of`], BullMQ's code where
/// BullMQ defines one, and what the result means.
pub fn job_row(id: &str, outcome: &JobOutcome, state: &str) -> JobResultRow {
    let (code, message): (Option<i64>, Option<String>) = match outcome {
        JobOutcome::Retried | JobOutcome::RetriedEarlier => (Some(1), None),
        JobOutcome::WouldRetry => (None, None),
        JobOutcome::NotFound => (Some(-1), Some("job does not exist".into())),
        JobOutcome::NotInState => (Some(-3), Some(format!("job is not in the {state} state"))),
        JobOutcome::AlreadyProcessed { .. } => {
            (None, Some("this run key retried the job before".into()))
        }
        JobOutcome::Error(msg) => (None, Some(cut(msg, MESSAGE_BYTES).to_string())),
        JobOutcome::Parked => (
            None,
            Some(
                "the policy's runs retried the job maxRetriesPerJob times; left where it is".into(),
            ),
        ),
    };
    JobResultRow {
        id: id.to_string(),
        result: result_of(outcome).as_str().to_string(),
        code,
        message,
    }
}

/// The most bytes the rows in status may take (the size rule, in bytes: with the spec's own
/// 400 KiB bound, the object stays far below etcd's 1.5 MiB).
pub const ROW_BYTES: usize = 256 * 1024;

/// About the bytes a row takes in the stored object.
fn row_bytes(r: &JobResultRow) -> usize {
    r.id.len() + r.result.len() + r.message.as_ref().map_or(0, String::len) + 48
}

/// Adds a batch of rows to `status`: counts, totals and rows under the size rule (every row
/// while the run has at most `row_limit` jobs; beyond, only non-success rows up to the limit;
/// and never more than [`ROW_BYTES`] of rows).
pub fn add_rows(status: &mut JobRetryStatus, rows: Vec<JobResultRow>, row_limit: usize) {
    let processed = status.processed.unwrap_or(0) + rows.len() as u64;
    for row in &rows {
        *status.counts.entry(row.result.clone()).or_insert(0) += 1;
    }
    status.processed = Some(processed);
    set_totals(status);
    keep_rows(status, rows, row_limit);
}

/// Keeps `rows` in `status` under the size rule of [`add_rows`], for a status whose
/// `processed` already counts them (a selector run's exact totals from its record, whose
/// pages reply with success rows only while the run is within the row limit).
pub fn keep_rows(status: &mut JobRetryStatus, rows: Vec<JobResultRow>, row_limit: usize) {
    let processed = status.processed.unwrap_or(0);
    status.jobs.extend(rows);
    let before = status.jobs.len();
    if processed as usize > row_limit || status.jobs_truncated {
        status
            .jobs
            .retain(|r| !r.result.parse().is_ok_and(JobResult::is_success));
        status.jobs.truncate(row_limit);
    }
    let mut bytes = 0;
    let fit = status
        .jobs
        .iter()
        .take_while(|r| {
            bytes += row_bytes(r);
            bytes <= ROW_BYTES
        })
        .count();
    status.jobs.truncate(fit);
    status.jobs_truncated = status.jobs_truncated || status.jobs.len() < before;
}

/// The most bytes of a job row's `message` (documented in `crd::JobResultRow`).
pub const MESSAGE_BYTES: usize = 512;
/// The most bytes of a preview value, a job name or failed reason (documented in
/// `crd::ValueCount`; the select script cuts them to the same length).
pub const VALUE_BYTES: usize = 200;
/// The most bytes of a condition's message (documented in `crd::JobRetryStatus`).
pub const CONDITION_MESSAGE_BYTES: usize = 1024;
/// The most bytes the whole status may take serialized (documented in
/// `crd::JobRetryStatus`): with the spec's own 400 KiB bound, the object stays far below
/// etcd's 1.5 MiB and the API server's request limit.
pub const STATUS_BYTES: usize = 256 * 1024;

/// `text` cut to at most `max` bytes at a character boundary: never inside a UTF-8 sequence.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// Cuts `text` in place to at most `max` bytes at a character boundary.
fn cut_in_place(text: &mut String, max: usize) {
    let len = cut(text, max).len();
    text.truncate(len);
}

/// Cuts every string of `status` that was copied from Redis (row messages, preview values,
/// condition messages, which may quote Redis) to its documented length.
pub fn cut_strings(status: &mut JobRetryStatus) {
    for message in status.jobs.iter_mut().filter_map(|r| r.message.as_mut()) {
        cut_in_place(message, MESSAGE_BYTES);
    }
    if let Some(p) = status.preview.as_mut() {
        for v in p.names.iter_mut().chain(p.reasons.iter_mut()) {
            cut_in_place(&mut v.value, VALUE_BYTES);
        }
    }
    for c in &mut status.conditions {
        cut_in_place(&mut c.message, CONDITION_MESSAGE_BYTES);
    }
}

/// Bytes of `value` serialized as JSON.
fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Keeps `status` within `budget` bytes serialized: cuts the strings copied from Redis
/// ([`cut_strings`]); then, while it is still larger, drops job rows from the end (the counts
/// stay exact and `jobsTruncated` is set), then the least frequent preview values.
pub fn fit(status: &mut JobRetryStatus, budget: usize) {
    cut_strings(status);
    loop {
        let over = json_len(status).saturating_sub(budget);
        if over == 0 {
            return;
        }
        if !status.jobs.is_empty() {
            drop_rows(status, over);
            continue;
        }
        match status.preview.as_mut() {
            Some(p) if has_values(p) => drop_values(&mut p.names, &mut p.reasons, over),
            // Nothing left to drop: what remains is bounded by the schema and the cuts.
            _ => return,
        }
    }
}

/// Drops rows from the end of `status.jobs` until at least `over` bytes are freed.
fn drop_rows(status: &mut JobRetryStatus, over: usize) {
    let mut freed = 0;
    while freed < over
        && let Some(row) = status.jobs.pop()
    {
        freed += json_len(&row) + 1;
    }
    status.jobs_truncated = true;
}

fn has_values(p: &Preview) -> bool {
    !p.names.is_empty() || !p.reasons.is_empty()
}

/// Drops the least frequent values (the lists are sorted by count, most frequent first),
/// the longer last one first, until at least `over` bytes are freed.
fn drop_values(names: &mut Vec<ValueCount>, reasons: &mut Vec<ValueCount>, over: usize) {
    let mut freed = 0;
    while freed < over {
        let last = |l: &Vec<ValueCount>| l.last().map_or(0, json_len);
        let list = if last(names) >= last(reasons) {
            &mut *names
        } else {
            &mut *reasons
        };
        match list.pop() {
            Some(v) => freed += json_len(&v) + 1,
            None => return,
        }
    }
}

/// Sets `retried`, `skipped` and `errors` from the counts.
pub fn set_totals(status: &mut JobRetryStatus) {
    let count = |r: JobResult| status.counts.get(r.as_str()).copied().unwrap_or(0);
    status.retried = Some(count(JobResult::Retried));
    status.skipped = Some(
        count(JobResult::NotFound)
            + count(JobResult::NotInState)
            + count(JobResult::AlreadyProcessed)
            + count(JobResult::Parked),
    );
    status.errors = Some(count(JobResult::Error));
}

/// Replaces the counts with a run's exact totals (a selector run's record in Redis), and
/// `processed` and the totals with theirs.
pub fn set_counts(status: &mut JobRetryStatus, counts: std::collections::BTreeMap<String, u64>) {
    status.processed = Some(counts.values().sum());
    status.counts = counts;
    set_totals(status);
}

/// Sets condition `type_` in `conditions`; keeps `lastTransitionTime` unless status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let old = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match old.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let cond = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    match old {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
}

/// What a status write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The status was applied.
    Applied,
    /// The object already had this status; nothing was sent.
    Unchanged,
    /// The object this status belongs to is gone: deleted, or deleted and re-created under
    /// the same name (another uid). Nothing was written; the run must stop.
    Gone,
}

/// How many times a status write is retried when the object changed (same uid) meanwhile.
const WRITE_ATTEMPTS: usize = 3;

/// Writes `status`, made to [`fit`] within [`STATUS_BYTES`], with server-side apply unless
/// it equals the object's current status.
///
/// The write is bound to this object, not just its name: the patch carries the
/// `resourceVersion` it was computed from, so the API server refuses it (409 Conflict) if the
/// object changed meanwhile. Then the object is read again: another uid, or none, means it
/// was deleted or re-created under the same name and the write is dropped ([`Written::Gone`]);
/// the same uid (a user edited it, e.g. `suspend`) is written again on the new version.
/// (A `metadata.uid` in the apply body is not enough: the API server ignores it on the
/// status subresource.)
pub async fn write(
    api: &Api<JobRetry>,
    obj: &JobRetry,
    status: &JobRetryStatus,
) -> kube::Result<Written> {
    let mut status = status.clone();
    fit(&mut status, STATUS_BYTES);
    if obj.status.as_ref() == Some(&status) {
        return Ok(Written::Unchanged);
    }
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let mut version = obj.metadata.resource_version.clone();
    for _ in 1..WRITE_ATTEMPTS {
        match apply(api, name, version.as_deref(), &status).await {
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            done => return done,
        }
        match api.get_opt(name).await? {
            Some(now) if now.metadata.uid == obj.metadata.uid => {
                version = now.metadata.resource_version
            }
            _ => return Ok(Written::Gone),
        }
    }
    apply(api, name, version.as_deref(), &status).await
}

/// One server-side apply of `status` on the object version `version`; 404 is
/// [`Written::Gone`].
async fn apply(
    api: &Api<JobRetry>,
    name: &str,
    version: Option<&str>,
    status: &JobRetryStatus,
) -> kube::Result<Written> {
    let patch = json!({
        "apiVersion": "jobretry.io/v1alpha1",
        "kind": "JobRetry",
        "metadata": { "resourceVersion": version },
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => Ok(Written::Applied),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Written::Gone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
