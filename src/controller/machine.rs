//! The run's state machine, pure: one transition per reconcile.
//!
//! Takes the object's current status, the spec facts a transition needs ([`Facts`]), what
//! the IO shell did in one slice ([`Slice`]: what it planned and loaded, the rows of the
//! batches it ran and how the slice ended, [`SliceResult`]) and `now`; gives the next status
//! (phase, conditions, counts, rows), when to look again ([`Requeue`]) and the events to
//! publish ([`Milestone`]).
//!
//! Guarantees: a terminal status is never changed; events only on a phase change, never per
//! job or batch; transient errors back off 1 s doubling to 60 s; every condition is set on
//! every transition, so none (e.g. `Suspended`) outlives the stage that set it.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use self::stage::{Stage, apply_stage};
use crate::{
    bullmq::Verdict,
    crd::{JobResultRow, JobRetrySpec, JobRetryStatus, Preview, SelectionStatus, phase},
    status,
};

mod error;
mod stage;

pub use self::error::RunError;

/// How long to wait before looking again at a run stalled on an unusable or unreadable
/// Secret.
pub const STALLED_RECHECK: Duration = Duration::from_secs(10);
/// The longest backoff between two tries after errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The pause between two slices of a run that is not rate-limited.
pub const NEXT_SLICE: Duration = Duration::from_millis(10);

/// What a transition needs to know of the object besides its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `metadata.generation`, recorded as `observedGeneration`.
    pub generation: Option<i64>,
    /// `spec.rateLimit.jobsPerSecond` (0: unlimited).
    pub jobs_per_second: u32,
    /// The operator's status row limit (the size rule).
    pub row_limit: usize,
}

impl Facts {
    /// The facts of `spec`, at `generation`, under the operator's `row_limit`.
    pub fn new(spec: &JobRetrySpec, generation: Option<i64>, row_limit: usize) -> Self {
        Self {
            generation,
            jobs_per_second: spec.rate_limit.as_ref().map_or(0, |r| r.jobs_per_second),
            row_limit,
        }
    }
}

/// What the IO shell did in one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The number of jobs the run covers, once planned.
    pub matched: Option<u64>,
    /// The run key, once planned.
    pub run_key: Option<String>,
    /// The queue's BullMQ version, once the queue is open: the run has started.
    pub bullmq_version: Option<String>,
    /// The rows of the batches this slice ran, in order.
    pub rows: Vec<JobResultRow>,
    /// Jobs the run had processed before this slice, as the run's record in Redis says (not
    /// as the status says: a user can write the status); status mirrors it.
    pub processed_before: Option<u64>,
    /// A selector run's progress after this slice.
    pub selection: Option<SelectionStatus>,
    /// A selector dry run's preview after this slice.
    pub preview: Option<Preview>,
    /// A selector run's exact counts after this slice, from its record in Redis: they
    /// replace what the rows add up to, so rows a crash lost are neither missed nor counted
    /// twice.
    pub counts: Option<BTreeMap<String, u64>>,
    /// The run starts over (a dry run whose progress was lost with the operator's memory):
    /// what the status counted so far is dropped first.
    pub restart: bool,
    /// How the slice ended.
    pub result: SliceResult,
}

impl Slice {
    /// A slice that ran nothing and ended with `result`.
    pub fn ended(result: SliceResult) -> Self {
        Self {
            matched: None,
            run_key: None,
            bullmq_version: None,
            rows: Vec::new(),
            processed_before: None,
            selection: None,
            preview: None,
            counts: None,
            restart: false,
            result,
        }
    }
}

/// How a slice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceResult {
    /// The spec asks for a pause: nothing ran.
    Suspended,
    /// Batches ran and jobs remain; `last_batch` jobs were in the last one (the rate limit
    /// spaces batches by it).
    Batches { last_batch: usize },
    /// Every job of the run is processed.
    Done,
    /// The run cannot go on now (after the slice's rows, if any).
    Error(RunError),
}

/// When to look at the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Not before the object changes.
    AwaitChange,
    /// After this delay (next slice, backoff, recheck).
    After(Duration),
    /// The rate limit's pause: no batch may start before it ends, whatever wakes the run.
    Pause(Duration),
}

/// An event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Milestone {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The result of one transition.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub status: JobRetryStatus,
    /// Consecutive failed tries (for backoff); 0 after a batch succeeded.
    pub failures: u32,
    pub requeue: Requeue,
    pub events: Vec<Milestone>,
}

/// The backoff after `failures` consecutive failed tries: 1 s doubling up to 60 s.
pub fn backoff(failures: u32) -> Duration {
    let n = failures.max(1) - 1;
    Duration::from_secs(1u64 << n.min(6)).min(MAX_BACKOFF)
}

/// The next state of a run after `slice`, from status `old` with `failures` consecutive
/// failed tries behind it.
pub fn step(
    old: &JobRetryStatus,
    failures: u32,
    facts: &Facts,
    slice: Slice,
    now: Timestamp,
) -> Transition {
    if old.phase.as_deref().is_some_and(phase::is_terminal) {
        return Transition {
            status: old.clone(),
            failures,
            requeue: Requeue::AwaitChange,
            events: Vec::new(),
        };
    }
    let mut status = old.clone();
    if slice.restart {
        restart(&mut status);
    }
    if let Some(p) = slice.processed_before {
        status.processed = Some(p);
    }
    status.selection = slice.selection.or(status.selection.take());
    status.preview = slice.preview.or(status.preview.take());
    let batches_ran = !slice.rows.is_empty();
    record_slice(
        &mut status,
        slice.matched,
        slice.run_key,
        slice.bullmq_version,
        now,
    );
    if batches_ran {
        status::add_rows(&mut status, slice.rows, facts.row_limit);
    }
    if let Some(counts) = slice.counts {
        status::set_counts(&mut status, counts);
    }
    let failures = if batches_ran { 0 } else { failures };
    let (stage, failures, requeue) = decide(&slice.result, failures, facts);
    apply_stage(&mut status, &stage, facts.generation, now);
    let events = milestones(old, &status, &stage, requeue);
    Transition {
        status,
        failures,
        requeue,
        events,
    }
}

/// Drops what the status counted of a run that starts over.
fn restart(status: &mut JobRetryStatus) {
    status.processed = None;
    status.retried = None;
    status.skipped = None;
    status.errors = None;
    status.counts.clear();
    status.jobs.clear();
    status.jobs_truncated = false;
    status.selection = None;
    status.preview = None;
}

/// Records what the slice planned and loaded; the run starts when its queue is open.
fn record_slice(
    status: &mut JobRetryStatus,
    matched: Option<u64>,
    run_key: Option<String>,
    version: Option<String>,
    now: Timestamp,
) {
    status.matched = matched.or(status.matched);
    status.run_key = run_key.or(status.run_key.take());
    if version.is_some() {
        status.bullmq_version = version;
        status.start_time.get_or_insert(Time(now));
    }
}

/// The stage, the failure count and the requeue a slice's result leads to.
fn decide<'a>(result: &'a SliceResult, failures: u32, facts: &Facts) -> (Stage<'a>, u32, Requeue) {
    match result {
        SliceResult::Suspended => (Stage::Suspended, failures, Requeue::AwaitChange),
        SliceResult::Done => (Stage::Done, 0, Requeue::AwaitChange),
        SliceResult::Batches { last_batch } => {
            let requeue = match facts.jobs_per_second {
                0 => Requeue::After(NEXT_SLICE),
                rate => Requeue::Pause(Duration::from_secs_f64(
                    *last_batch as f64 / f64::from(rate),
                )),
            };
            (Stage::Running, 0, requeue)
        }
        SliceResult::Error(e @ (RunError::SecretInvalid(_) | RunError::SecretForbidden(_))) => {
            (Stage::Stalled(e), failures, Requeue::After(STALLED_RECHECK))
        }
        SliceResult::Error(e) => {
            let n = failures.saturating_add(1);
            match e.verdict() {
                Verdict::Transient => (Stage::Waiting(e), n, Requeue::After(backoff(n))),
                Verdict::Stalled => (
                    Stage::Stalled(e),
                    n,
                    Requeue::After(backoff(n).max(STALLED_RECHECK)),
                ),
                Verdict::Permanent => (Stage::Failed(e), failures, Requeue::AwaitChange),
            }
        }
    }
}

/// The events of a transition from `old` to `new`: `Started` when the run starts (its
/// queue is open for the first time, whatever the phase), and the stage's event when the
/// phase changes.
fn milestones(
    old: &JobRetryStatus,
    new: &JobRetryStatus,
    stage: &Stage,
    requeue: Requeue,
) -> Vec<Milestone> {
    let started_now = old.start_time.is_none() && new.start_time.is_some();
    let mut events = Vec::new();
    if started_now && (*stage != Stage::Running || old.phase == new.phase) {
        events.push(milestone(new, &Stage::Running, requeue));
    }
    if old.phase != new.phase {
        events.push(milestone(new, stage, requeue));
    }
    events
}

fn milestone(s: &JobRetryStatus, stage: &Stage, requeue: Requeue) -> Milestone {
    let normal = |reason, note| Milestone {
        warning: false,
        reason,
        note,
    };
    let warning = |e: &RunError, note| Milestone {
        warning: true,
        reason: e.reason(),
        note,
    };
    match stage {
        Stage::Running => normal(
            "Started",
            format!("retrying {} jobs", s.matched.unwrap_or(0)),
        ),
        Stage::Done => normal(
            "Completed",
            format!(
                "{} of {} jobs retried, {} skipped, {} errors{}",
                s.retried.unwrap_or(0),
                s.matched.unwrap_or(0),
                s.skipped.unwrap_or(0),
                s.errors.unwrap_or(0),
                stage::unexamined_note(s)
            ),
        ),
        Stage::Suspended => normal("Suspended", "run suspended".to_string()),
        Stage::Failed(e) | Stage::Stalled(e) => warning(e, e.to_string()),
        Stage::Waiting(e) => {
            let delay = match requeue {
                Requeue::After(d) | Requeue::Pause(d) => d,
                Requeue::AwaitChange => Duration::ZERO,
            };
            warning(e, format!("{e}; retrying in {}s", delay.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests;
