//! The stages of a run and what each means for the status: phase, times and every
//! kstatus-style condition (pure; the state machine's half that writes conditions).
//!
//! Guarantees: every stage sets every condition it does not own to False, so none (e.g.
//! `Suspended`) outlives the stage that set it; `completionTime` is set once, on the first
//! terminal phase.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::RunError;
use crate::{
    crd::{JobRetryStatus, condition, phase, reason},
    status,
};

/// Where a run stands after a slice; sets every condition (see [`apply_stage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Stage<'a> {
    /// Batches are being processed.
    Running,
    /// A transient problem; retried with backoff.
    Waiting(&'a RunError),
    /// Cannot proceed until the user fixes something outside the JobRetry.
    Stalled(&'a RunError),
    Suspended,
    /// Terminal: every job processed.
    Done,
    /// Terminal: the run could not run.
    Failed(&'a RunError),
}

/// One condition to set: type, status, reason, message.
type Cond<'a> = (&'static str, bool, &'a str, String);

/// Sets phase, times and every condition of `status` for `stage`.
pub(super) fn apply_stage(
    status: &mut JobRetryStatus,
    stage: &Stage,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.observed_generation = generation;
    let (new_phase, conds) = conditions(status, stage);
    for (t, s, r, m) in conds {
        status::set_condition(&mut status.conditions, t, s, r, &m, generation, now);
    }
    status.phase = Some(new_phase.to_string());
    if phase::is_terminal(new_phase) && status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
}

/// What a selector run skipped without examining it, said where the run reports progress.
pub(super) fn unexamined_note(status: &JobRetryStatus) -> String {
    match status.selection.as_ref().map_or(0, |s| s.unexamined) {
        0 => String::new(),
        n => format!(
            "; {n} jobs not examined (too large to match within one Redis call, or not a hash): see status.selection.unexamined, retry them by id if wanted"
        ),
    }
}

/// The phase and the conditions (in the order they are set) of `stage`.
fn conditions<'a>(status: &JobRetryStatus, stage: &'a Stage) -> (&'static str, Vec<Cond<'a>>) {
    use condition::*;
    let progress = format!(
        "processed {} of {} jobs",
        status.processed.unwrap_or(0),
        status.matched.unwrap_or(0)
    );
    match stage {
        Stage::Running => {
            let r = reason::PROGRESSING;
            let conds = vec![
                (RECONCILING, true, r, progress.clone()),
                (READY, false, r, progress),
                (STALLED, false, r, String::new()),
                (SUSPENDED, false, r, String::new()),
            ];
            (phase::RUNNING, conds)
        }
        Stage::Suspended => {
            let (r, m) = (reason::SUSPENDED, format!("suspended after {progress}"));
            let conds = vec![
                (SUSPENDED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (STALLED, false, r, String::new()),
            ];
            (phase::SUSPENDED, conds)
        }
        Stage::Done => done_conditions(status, progress),
        Stage::Waiting(e) | Stage::Stalled(e) | Stage::Failed(e) => {
            held_conditions(status, stage, e)
        }
    }
}

/// The phase and conditions of a run held up by `e`.
fn held_conditions<'a>(
    status: &JobRetryStatus,
    stage: &Stage,
    e: &'a RunError,
) -> (&'static str, Vec<Cond<'a>>) {
    use condition::*;
    let (r, m) = (e.reason(), e.to_string());
    match stage {
        Stage::Waiting(_) => {
            let conds = vec![
                (RECONCILING, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (STALLED, false, r, m),
                (SUSPENDED, false, r, String::new()),
            ];
            // A transient wait keeps a running run Running; anything else is Pending.
            match status.phase.as_deref() {
                Some(phase::RUNNING) => (phase::RUNNING, conds),
                _ => (phase::PENDING, conds),
            }
        }
        Stage::Stalled(_) => {
            let conds = vec![
                (STALLED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (SUSPENDED, false, r, String::new()),
            ];
            (phase::PENDING, conds)
        }
        _ => {
            let conds = vec![
                (FAILED, true, r, m.clone()),
                (STALLED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (SUSPENDED, false, r, String::new()),
            ];
            (phase::FAILED, conds)
        }
    }
}

/// The terminal phase and conditions of a run that processed every job.
fn done_conditions(
    status: &JobRetryStatus,
    progress: String,
) -> (&'static str, Vec<Cond<'static>>) {
    use condition::*;
    let (skipped, errors) = (status.skipped.unwrap_or(0), status.errors.unwrap_or(0));
    // Jobs a selector could not examine may have matched: not a full success.
    let unexamined = status.selection.as_ref().map_or(0, |s| s.unexamined);
    let (done, r) = if skipped + errors + unexamined == 0 {
        (phase::SUCCEEDED, reason::SUCCEEDED)
    } else {
        (phase::PARTIALLY_SUCCEEDED, reason::PARTIALLY_SUCCEEDED)
    };
    let m = format!(
        "{progress}: {} retried, {skipped} skipped, {errors} errors{}",
        status.retried.unwrap_or(0),
        unexamined_note(status)
    );
    let conds = vec![
        (COMPLETE, true, r, m.clone()),
        (READY, true, r, m.clone()),
        (RECONCILING, false, r, m),
        (STALLED, false, r, String::new()),
        (SUSPENDED, false, r, String::new()),
    ];
    (done, conds)
}
