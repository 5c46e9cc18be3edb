//! The run's state machine, pure: one transition per reconcile, and the only code that
//! builds a new status value or a new per-object memory.
//!
//! Takes the object's current status and memory, the spec facts a transition needs
//! ([`Facts`]), what the execute step did ([`Progress`]: the run's scope, the rows of the
//! batches it ran, a selector's pages, how the slice ended, [`End`]) and `now`; gives the next
//! status (phase, conditions, counts, rows), the next memory (backoff, the rate limit's pause,
//! the page budget, a dry run's scan), when to look again ([`Requeue`]) and the events to
//! publish ([`Milestone`]).
//!
//! Guarantees: a terminal status is never changed; events only on a phase change, never per
//! job or batch; transient errors back off 1 s doubling to 60 s with jitter
//! (`rules::backoff`); every condition is set on every transition, so none (e.g. `Suspended`)
//! outlives the stage that set it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use self::stage::{Stage, apply_stage};
use super::{
    error::{RunError, SecretError},
    memory::{DryScan, Memory},
    plan::Scope,
    rules,
};
use crate::{
    bullmq::Verdict,
    crd::{EventReason, JobResultRow, JobRetrySpec, JobRetryStatus, Phase, Preview, Reason},
    status,
};

mod stage;

/// How long to wait before looking again at a run stalled on an unusable or unreadable
/// Secret.
pub const STALLED_RECHECK: Duration = Duration::from_secs(10);
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
    /// Draws the backoff's jitter (per object); `None`: no jitter.
    pub jitter_seed: Option<u64>,
    /// Who asked for the run (its recorded requester), frozen into status when first seen.
    pub requester: Option<String>,
    /// `spec.reason`, for the run's Events.
    pub reason: Option<String>,
}

impl Facts {
    /// The facts of `spec`, at `generation`, under the operator's `row_limit`.
    pub fn new(spec: &JobRetrySpec, generation: Option<i64>, row_limit: usize) -> Self {
        Self {
            generation,
            jobs_per_second: spec.rate_limit.as_ref().map_or(0, |r| r.jobs_per_second),
            row_limit,
            jitter_seed: None,
            requester: None,
            reason: spec.reason.clone().filter(|r| !r.is_empty()),
        }
    }
}

/// What the execute step did in one slice.
#[derive(Debug)]
pub struct Progress {
    /// The run's scope as status shows it (key, jobs covered, release, selector bound).
    pub scope: Scope,
    /// Jobs the run had processed before this slice, as the run's record in Redis says (not
    /// as the status says: a user can write the status); status mirrors it.
    pub processed_before: Option<u64>,
    /// The rows of the batches this slice ran, in order.
    pub rows: Vec<JobResultRow>,
    /// When the slice's last batch started (the rate limit's pause counts from it).
    pub last_batch_started: Option<Instant>,
    /// What a selector run's pages found.
    pub pages: Option<PagesProgress>,
    /// What an id run's recent batches cost, after the last one.
    pub cost: Option<rules::PageCost>,
    /// How the slice ended.
    pub end: End,
}

/// What a selector run's pages found in a slice.
#[derive(Debug, Default)]
pub struct PagesProgress {
    /// The run starts over (a dry run whose progress was lost with the operator's memory):
    /// what the status counted so far is dropped first.
    pub restart: bool,
    /// The run's exact counts, from its record in Redis (real runs): they replace what the
    /// rows add up to, so rows a crash lost are neither missed nor counted twice.
    pub counts: Option<BTreeMap<String, u64>>,
    /// A dry run's preview.
    pub preview: Option<Preview>,
    /// What the recent pages cost, after the last page.
    pub cost: rules::PageCost,
    /// Page calls that returned a page.
    pub calls: u32,
    /// A dry run's scan after the last page.
    pub dry: Option<DryScan>,
}

impl Progress {
    /// Nothing done yet, within `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            processed_before: None,
            rows: Vec::new(),
            last_batch_started: None,
            pages: None,
            cost: None,
            end: End::Idle,
        }
    }
}

/// How a slice ended.
#[derive(Debug)]
pub enum End {
    /// Nothing ran, and nothing changes: this replica does not lead.
    Idle,
    /// Nothing ran: the rate limit's pause holds for this long.
    Wait(Duration),
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
    /// An [`EventReason`], or the [`Reason`] of the error that holds the run.
    pub reason: &'static str,
    pub note: String,
}

/// The result of one transition.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub status: JobRetryStatus,
    pub memory: Memory,
    pub requeue: Requeue,
    pub events: Vec<Milestone>,
    /// The error the run is held by, if any (logs and metrics).
    pub held_by: Option<Reason>,
}

/// The next state of a run after `progress`, from status `old` and memory `memory`.
pub fn step(
    old: &JobRetryStatus,
    memory: &Memory,
    facts: &Facts,
    progress: Progress,
    now: Timestamp,
) -> Transition {
    let unchanged = |requeue| Transition {
        status: old.clone(),
        memory: memory.clone(),
        requeue,
        events: Vec::new(),
        held_by: None,
    };
    if Phase::of(Some(old)).is_some_and(Phase::is_terminal) {
        return unchanged(Requeue::AwaitChange);
    }
    match progress.end {
        End::Idle => return unchanged(Requeue::AwaitChange),
        End::Wait(d) => return unchanged(Requeue::Pause(d)),
        _ => {}
    }
    let mut status = next_status(old, &progress, now);
    if status.requester.is_none() {
        status.requester = facts.requester.clone();
    }
    let pages_ran = progress.pages.as_ref().is_some_and(|p| p.calls > 0);
    let batches_ran = !progress.rows.is_empty() || pages_ran;
    let failures = if batches_ran { 0 } else { memory.failures };
    let (stage, failures, requeue) = decide(&progress.end, failures, facts);
    let mut memory = next_memory(memory, failures, requeue, &progress);
    match progress.pages.as_ref().and_then(|p| p.counts.clone()) {
        Some(counts) => {
            status::set_counts(&mut status, counts);
            status::keep_rows(&mut status, progress.rows.clone(), facts.row_limit);
        }
        None if batches_ran => {
            status::add_rows(&mut status, progress.rows.clone(), facts.row_limit)
        }
        None => {}
    }
    apply_stage(&mut status, &stage, facts.generation, now);
    let events = milestones(old, &status, &stage, requeue, facts);
    if Phase::of(Some(&status)).is_some_and(Phase::is_terminal) {
        memory = Memory::default();
    }
    Transition {
        held_by: stage.error().map(RunError::reason),
        status,
        memory,
        requeue,
        events,
    }
}

/// The memory after a reconcile of object `uid` failed before it got to a transition (the
/// Kubernetes API failed), and the backoff before the next try.
pub fn reconcile_failed(memory: &Memory, uid: &str) -> (Memory, Duration) {
    let failures = memory.failures.saturating_add(1);
    let delay = rules::backoff(failures, Some(rules::jitter_seed(uid)));
    let memory = Memory {
        failures,
        ..memory.clone()
    };
    (memory, delay)
}

/// The status with what the slice found, before its rows and stage are applied.
fn next_status(old: &JobRetryStatus, progress: &Progress, now: Timestamp) -> JobRetryStatus {
    let mut status = old.clone();
    let pages = progress.pages.as_ref();
    if pages.is_some_and(|p| p.restart) {
        restart(&mut status);
    }
    if let Some(p) = progress.processed_before {
        status.processed = Some(p);
    }
    let scope = &progress.scope;
    status.selection = scope.selection.clone().or(status.selection.take());
    let preview = pages.and_then(|p| p.preview.clone());
    status.preview = preview.or(status.preview.take());
    status.matched = scope.matched.or(status.matched);
    status.refailed = scope.refailed.or(status.refailed);
    status.run_key = scope.run_key.clone().or(status.run_key.take());
    if scope.bullmq_version.is_some() {
        status.bullmq_version = scope.bullmq_version.clone();
        status.start_time.get_or_insert(Time(now));
    }
    status
}

/// The memory after a slice: the failure count, the rate limit's pause from the last
/// batch's start, and a selector's page budget and dry-run scan (a finished scan is
/// dropped).
fn next_memory(old: &Memory, failures: u32, requeue: Requeue, progress: &Progress) -> Memory {
    let not_before = match requeue {
        Requeue::Pause(d) => Some(progress.last_batch_started.unwrap_or_else(Instant::now) + d),
        _ => None,
    };
    let pages = progress.pages.as_ref();
    let dry = match (&progress.end, pages) {
        (End::Done, _) => None,
        (_, Some(p)) if p.dry.is_some() => p.dry.clone(),
        _ => old.dry.clone(),
    };
    Memory {
        failures,
        not_before,
        pages: (progress.cost.clone())
            .or_else(|| pages.map(|p| p.cost.clone()))
            .unwrap_or_else(|| old.pages.clone()),
        dry,
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

/// The stage, the failure count and the requeue a slice's end leads to.
fn decide<'a>(end: &'a End, failures: u32, facts: &Facts) -> (Stage<'a>, u32, Requeue) {
    match end {
        End::Suspended => (Stage::Suspended, failures, Requeue::AwaitChange),
        End::Done => (Stage::Done, 0, Requeue::AwaitChange),
        End::Batches { last_batch } => {
            let requeue = rules::pause(*last_batch, facts.jobs_per_second)
                .map_or(Requeue::After(NEXT_SLICE), Requeue::Pause);
            (Stage::Running, 0, requeue)
        }
        End::Error(
            e @ RunError::Secret(SecretError::Invalid { .. } | SecretError::Forbidden(_)),
        ) => (Stage::Stalled(e), failures, Requeue::After(STALLED_RECHECK)),
        End::Error(e) => {
            let n = failures.saturating_add(1);
            let backoff = rules::backoff(n, facts.jitter_seed);
            match e.verdict() {
                Verdict::Transient => (Stage::Waiting(e), n, Requeue::After(backoff)),
                Verdict::Stalled => (
                    Stage::Stalled(e),
                    n,
                    Requeue::After(backoff.max(STALLED_RECHECK)),
                ),
                Verdict::Permanent => (Stage::Failed(e), failures, Requeue::AwaitChange),
            }
        }
        // Handled before a status is made.
        End::Idle | End::Wait(_) => (Stage::Running, failures, Requeue::AwaitChange),
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
    facts: &Facts,
) -> Vec<Milestone> {
    let started_now = old.start_time.is_none() && new.start_time.is_some();
    let mut events = Vec::new();
    if started_now && (!matches!(stage, Stage::Running) || old.phase == new.phase) {
        events.push(milestone(new, &Stage::Running, requeue, facts));
    }
    if old.phase != new.phase {
        events.push(milestone(new, stage, requeue, facts));
    }
    events
}

/// Who asked and why, for the Started event: `, requested by alice: db failover`.
fn asked_by(s: &JobRetryStatus, facts: &Facts) -> String {
    let who = s
        .requester
        .as_deref()
        .map_or(String::new(), |r| format!(", requested by {r}"));
    let why = facts
        .reason
        .as_deref()
        .map_or(String::new(), |r| format!(": {r}"));
    format!("{who}{why}")
}

fn milestone(s: &JobRetryStatus, stage: &Stage, requeue: Requeue, facts: &Facts) -> Milestone {
    let normal = |reason: EventReason, note| Milestone {
        warning: false,
        reason: reason.into(),
        note,
    };
    let warning = |e: &RunError, note| Milestone {
        warning: true,
        reason: e.reason().as_str(),
        note,
    };
    match stage {
        Stage::Running => normal(
            EventReason::Started,
            format!(
                "retrying {} jobs{}",
                s.matched.unwrap_or(0),
                asked_by(s, facts)
            ),
        ),
        Stage::Done => normal(
            EventReason::Completed,
            format!(
                "{} of {} jobs retried, {} skipped, {} errors{}",
                s.retried.unwrap_or(0),
                s.matched.unwrap_or(0),
                s.skipped.unwrap_or(0),
                s.errors.unwrap_or(0),
                stage::unexamined_note(s)
            ),
        ),
        Stage::Suspended => normal(EventReason::Suspended, "run suspended".to_string()),
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
