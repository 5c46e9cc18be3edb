//! The stages of a run and what each means for the status: phase, times and every
//! kstatus-style condition (pure; the state machine's half that writes conditions).
//!
//! Guarantees: every stage sets every condition it does not own to False, so none (e.g.
//! `Suspended`) outlives the stage that set it; `completionTime` is set once, on the first
//! terminal phase.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::controller::error::RunError;
use crate::{
    crd::{JobRetryStatus, Phase, Reason, condition},
    status,
};

/// Where a run stands after a slice; sets every condition (see [`apply_stage`]).
#[derive(Clone, Debug)]
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

impl<'a> Stage<'a> {
    /// The error that holds the run, if any.
    pub(super) fn error(&self) -> Option<&'a RunError> {
        match self {
            Stage::Waiting(e) | Stage::Stalled(e) | Stage::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// One condition to set: type, status, reason, message.
type Cond = (&'static str, bool, Reason, String);

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
        let r = r.as_str();
        status::set_condition(&mut status.conditions, t, s, r, &m, generation, now);
    }
    status.phase = Some(new_phase.as_str().to_string());
    if new_phase.is_terminal() && status.completion_time.is_none() {
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
fn conditions(status: &JobRetryStatus, stage: &Stage) -> (Phase, Vec<Cond>) {
    use condition::*;
    let progress = format!(
        "processed {} of {} jobs",
        status.processed.unwrap_or(0),
        status.matched.unwrap_or(0)
    );
    match stage {
        Stage::Running => {
            let r = Reason::Progressing;
            let conds = vec![
                (RECONCILING, true, r, progress.clone()),
                (READY, false, r, progress),
                (STALLED, false, r, String::new()),
                (SUSPENDED, false, r, String::new()),
            ];
            (Phase::Running, conds)
        }
        Stage::Suspended => {
            let (r, m) = (Reason::Suspended, format!("suspended after {progress}"));
            let conds = vec![
                (SUSPENDED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (STALLED, false, r, String::new()),
            ];
            (Phase::Suspended, conds)
        }
        Stage::Done => done_conditions(status, progress),
        Stage::Waiting(e) | Stage::Stalled(e) | Stage::Failed(e) => {
            held_conditions(status, stage, e)
        }
    }
}

/// The phase and conditions of a run held up by `e`.
fn held_conditions(status: &JobRetryStatus, stage: &Stage, e: &RunError) -> (Phase, Vec<Cond>) {
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
            match Phase::of(Some(status)) {
                Some(Phase::Running) => (Phase::Running, conds),
                _ => (Phase::Pending, conds),
            }
        }
        Stage::Stalled(_) => {
            let conds = vec![
                (STALLED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (SUSPENDED, false, r, String::new()),
            ];
            (Phase::Pending, conds)
        }
        _ => {
            let conds = vec![
                (FAILED, true, r, m.clone()),
                (STALLED, true, r, m.clone()),
                (READY, false, r, m.clone()),
                (RECONCILING, false, r, m),
                (SUSPENDED, false, r, String::new()),
            ];
            (Phase::Failed, conds)
        }
    }
}

/// The terminal phase and conditions of a run that processed every job.
fn done_conditions(status: &JobRetryStatus, progress: String) -> (Phase, Vec<Cond>) {
    use condition::*;
    let (skipped, errors) = (status.skipped.unwrap_or(0), status.errors.unwrap_or(0));
    // Jobs a selector could not examine may have matched: not a full success.
    let unexamined = status.selection.as_ref().map_or(0, |s| s.unexamined);
    let (done, r) = if skipped + errors + unexamined == 0 {
        (Phase::Succeeded, Reason::Succeeded)
    } else {
        (Phase::PartiallySucceeded, Reason::PartiallySucceeded)
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
