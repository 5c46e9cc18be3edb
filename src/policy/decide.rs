//! The policy controller's decision, pure: from the policy (spec, status, generation and the
//! resume annotation), its runs as the cache shows them, the clock and the failure count the
//! shell read, what to do now (create a run, delete runs) and the policy's next status. The
//! only code that builds a policy status. The clock is a parameter: tests step it through
//! daylight-saving changes, missed windows and backwards jumps.
//!
//! CronJob's rules, kept: ticks are counted from the last scheduled tick (else the policy's
//! creation); of missed ticks only the most recent runs, once, and not when it is older than
//! `startingDeadlineSeconds`; Forbid leaves a due tick for later while a run is active (it
//! then runs late if still within the deadline), Replace deletes the active runs and starts
//! the new one; suspend creates nothing; history limits delete the oldest finished runs.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp, tz::TimeZone},
};

use super::child;
use crate::crd::{
    Phase, Reason,
    condition::{READY, RECONCILING, STALLED, SUSPENDED},
    cron::Schedule,
    policy::{
        ConcurrencyPolicy, GuardTrip, JobRetryPolicy, JobRetryPolicyStatus, PolicyEventReason,
        RunCause, RunRef,
    },
};
use crate::status::set_condition;

/// The longest a policy waits between two looks (a changed clock or a missed watch event is
/// noticed within it).
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);
/// How many missed ticks are counted one by one; beyond, the count says "more than this".
pub const MISSED_CAP: u32 = 100;

/// A run of the policy as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    pub tick: Timestamp,
    pub phase: Option<Phase>,
    pub completed: Option<Timestamp>,
    pub matched: u64,
    pub retried: u64,
    pub parked: u64,
    /// Matched jobs (not parked) an earlier run of the policy had retried.
    pub refailed: u64,
}

impl Run {
    fn active(&self) -> bool {
        !self.phase.is_some_and(Phase::is_terminal)
    }
}

/// What the decision is given.
pub struct Inputs<'a> {
    pub policy: &'a JobRetryPolicy,
    pub runs: &'a [Run],
    pub now: Timestamp,
    /// Jobs that entered the template's state within the failure window, if read now.
    pub failures: Option<u64>,
}

/// A run to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    pub name: String,
    pub tick: Timestamp,
    pub cause: RunCause,
}

/// Something worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: PolicyEventReason,
    pub warning: bool,
    pub text: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub create: Option<NewRun>,
    /// Runs to delete: replaced (Replace), or past the history limits.
    pub delete: Vec<String>,
    pub status: JobRetryPolicyStatus,
    pub requeue: Duration,
    pub notes: Vec<Note>,
    /// Whether the guard tripped now.
    pub tripped: bool,
}

/// The policy's schedule, parsed, and its time zone; an error names what is wrong.
pub fn schedule(policy: &JobRetryPolicy) -> Result<Option<(Schedule, TimeZone)>, String> {
    let Some(text) = policy.spec.schedule.as_deref() else {
        return Ok(None);
    };
    let parsed: Schedule = text
        .parse()
        .map_err(|e| format!("spec.schedule {text:?}: {e}"))?;
    let zone = policy.spec.time_zone.as_deref().unwrap_or("UTC");
    let tz = TimeZone::get(zone).map_err(|e| format!("spec.timeZone {zone:?}: {e}"))?;
    Ok(Some((parsed, tz)))
}

/// When the failure trigger must be read now: the start of its window (None: not due).
/// `last_check` is when this replica last read it.
pub fn failures_due(
    policy: &JobRetryPolicy,
    last_check: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let on = policy.spec.on_failures.as_ref()?;
    let within = window(&on.within)?;
    let status = policy.status.clone().unwrap_or_default();
    if policy.spec.suspend || held(policy, &status) {
        return None;
    }
    let fired = status.last_failures_time.map(|t| t.0);
    if fired.is_some_and(|f| now < f + within) {
        return None;
    }
    let every = SignedDuration::from_secs(i64::from(on.check_every_seconds));
    match last_check {
        Some(c) if now >= c && now < c + every => None,
        _ => Some(now - within),
    }
}

/// `onFailures.within` (10m, 1h30m) as a duration.
pub fn window(text: &str) -> Option<SignedDuration> {
    let span: k8s_openapi::jiff::Span = text.parse().ok()?;
    SignedDuration::try_from(span).ok()
}

/// Whether the loop guard holds the policy (a trip not yet cleared).
fn held(policy: &JobRetryPolicy, status: &JobRetryPolicyStatus) -> bool {
    status.guard.as_ref().is_some_and(|t| !cleared(policy, t))
}

/// Whether a trip is over: the spec changed since, or a resume was asked after it (a time
/// after the trip, or a new stamp: the asker's clock may run behind the operator's).
fn cleared(policy: &JobRetryPolicy, trip: &GuardTrip) -> bool {
    let generation = policy.metadata.generation.unwrap_or(0);
    let stamp = resume_stamp(policy);
    let later = stamp
        .and_then(|s| s.parse::<Timestamp>().ok())
        .is_some_and(|r| r > trip.tripped_at.0);
    let renewed = stamp.is_some() && stamp != trip.resume_at.as_deref();
    generation != trip.generation || later || renewed
}

/// The resume annotation's value, if set.
fn resume_stamp(policy: &JobRetryPolicy) -> Option<&str> {
    let a = policy.metadata.annotations.as_ref()?;
    a.get(crate::crd::policy::RESUME_AT_ANNOTATION)
        .map(String::as_str)
}

/// The decision.
pub fn decide(i: &Inputs) -> Decision {
    let old = i.policy.status.clone().unwrap_or_default();
    let mut d = Decision {
        create: None,
        delete: Vec::new(),
        status: old.clone(),
        requeue: MAX_REQUEUE,
        notes: Vec::new(),
        tripped: false,
    };
    account(i, &mut d);
    judge_trip(i, &mut d);
    match schedule(i.policy) {
        Ok(s) => {
            if let Some((sched, tz)) = &s {
                scheduled(i, sched, tz, &mut d);
            }
            on_failures(i, &mut d);
        }
        Err(why) => d.notes.push(Note {
            reason: PolicyEventReason::TickSkipped,
            warning: true,
            text: why,
        }),
    }
    prune(i, &mut d);
    conditions(i, &mut d);
    d
}

/// Adds each run that finished since the last look to the counters, once, and judges it with
/// the loop guard; keeps `active` and `counted` to the runs that exist.
fn account(i: &Inputs, d: &mut Decision) {
    let s = &mut d.status;
    let mut fresh: Vec<&Run> = (i.runs.iter())
        .filter(|r| !r.active() && !s.counted.contains(&r.name))
        .collect();
    fresh.sort_by_key(|r| (r.completed, r.tick));
    for r in &fresh {
        s.jobs_retried += r.retried;
        s.jobs_parked += r.parked;
        if let Some(trip) = guard_verdict(i.policy, r, i.now) {
            d.notes.push(Note {
                reason: PolicyEventReason::GuardTripped,
                warning: true,
                text: format!(
                    "{}% of the {} jobs run {} matched had been retried by an earlier run and failed again: no new run until `kubectl jobretry resume` or a spec change",
                    trip.refailed_percent, r.matched, r.name
                ),
            });
            s.guard = Some(trip);
            d.tripped = true;
        }
    }
    let exists = |n: &String| i.runs.iter().any(|r| &r.name == n);
    s.counted.retain(exists);
    s.counted.extend(fresh.iter().map(|r| r.name.clone()));
    let mut active: Vec<&Run> = i.runs.iter().filter(|r| r.active()).collect();
    active.sort_by_key(|r| r.tick);
    s.active = active
        .iter()
        .map(|r| RunRef {
            name: r.name.clone(),
        })
        .collect();
}

/// The guard's trip for finished run `r`, if `r` meets `minSample` and more than
/// `maxRefailedPercent` of its matched jobs had been retried before.
fn guard_verdict(policy: &JobRetryPolicy, r: &Run, now: Timestamp) -> Option<GuardTrip> {
    let g = policy.spec.guard.as_ref()?;
    let sample = r.matched.saturating_sub(r.parked);
    if sample == 0
        || sample < g.min_sample
        || r.refailed * 100 <= u64::from(g.max_refailed_percent) * sample
    {
        return None;
    }
    Some(GuardTrip {
        tripped_at: Time(now),
        generation: policy.metadata.generation.unwrap_or(0),
        refailed_percent: (r.refailed * 100 / sample) as u32,
        run: Some(r.name.clone()),
        resume_at: resume_stamp(policy).map(str::to_string),
    })
}

/// Clears a trip that is over (spec changed, or resumed after it).
fn judge_trip(i: &Inputs, d: &mut Decision) {
    let Some(trip) = d.status.guard.clone() else {
        return;
    };
    if !d.tripped && cleared(i.policy, &trip) {
        d.status.guard = None;
        d.notes.push(Note {
            reason: PolicyEventReason::GuardCleared,
            warning: false,
            text: "the loop guard's trip is cleared (spec changed, or resumed); runs start again"
                .into(),
        });
    }
}

/// Whether the policy may create a run now (not suspended, not held by its guard).
fn may_create(i: &Inputs, d: &Decision) -> bool {
    !i.policy.spec.suspend && d.status.guard.is_none()
}

/// The schedule: the most recent due tick, if it may run now.
fn scheduled(i: &Inputs, sched: &Schedule, tz: &TimeZone, d: &mut Decision) {
    let created = (i.policy.metadata.creation_timestamp.as_ref()).map_or(i.now, |t| t.0);
    let earliest = d
        .status
        .last_schedule_time
        .as_ref()
        .map_or(created, |t| t.0.max(created));
    if let Some(next) = sched.next_after(i.now.max(earliest), tz) {
        d.requeue = d.requeue.min(until(i.now, next));
    }
    let Some((tick, missed)) = most_recent(sched, tz, earliest, i.now) else {
        return; // none due (or the clock went back before the last tick)
    };
    if let Some(deadline) = i.policy.spec.starting_deadline_seconds
        && i.now.duration_since(tick) > SignedDuration::from_secs(deadline)
    {
        skip(
            d,
            format!(
                "the tick at {tick} was missed by more than startingDeadlineSeconds ({deadline} s); {} missed",
                missed_text(missed)
            ),
        );
        return;
    }
    start(i, d, tick, RunCause::Schedule);
}

/// The most recent tick in (earliest, now] and how many ticks were due (capped), scanning
/// at most [`MISSED_CAP`] ticks forward and then windows back from `now`.
fn most_recent(
    sched: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> Option<(Timestamp, u32)> {
    let first = sched.next_after(earliest, tz).filter(|t| *t <= now)?;
    let (mut last, mut missed) = (first, 1);
    while missed <= MISSED_CAP {
        match sched.next_after(last, tz) {
            Some(t) if t <= now => (last, missed) = (t, missed + 1),
            _ => return Some((last, missed)),
        }
    }
    // More than the cap: the latest tick is found from windows that end now.
    for hours in [1, 24, 24 * 32, 24 * 367] {
        let from = (now - SignedDuration::from_hours(hours)).max(last);
        let mut t = sched.next_after(from, tz).filter(|t| *t <= now);
        if t.is_none() {
            continue;
        }
        while let Some(n) = t
            .and_then(|x| sched.next_after(x, tz))
            .filter(|n| *n <= now)
        {
            t = Some(n);
        }
        return t.map(|t| (t, missed));
    }
    Some((last, missed))
}

fn missed_text(missed: u32) -> String {
    if missed > MISSED_CAP {
        format!("more than {MISSED_CAP} ticks")
    } else {
        format!("{missed} tick(s)")
    }
}

fn skip(d: &mut Decision, text: String) {
    d.notes.push(Note {
        reason: PolicyEventReason::TickSkipped,
        warning: false,
        text,
    });
}

/// Starts the run of `tick` unless suspended, held, or Forbid with a run active; Replace
/// deletes the active runs.
fn start(i: &Inputs, d: &mut Decision, tick: Timestamp, cause: RunCause) {
    let policy = i.policy.metadata.name.as_deref().unwrap_or_default();
    let name = child::scheduled_name(policy, tick);
    if d.create.as_ref().is_some_and(|c| c.name == name) || i.runs.iter().any(|r| r.name == name) {
        return; // this minute's run exists (or is being created)
    }
    if !may_create(i, d) {
        return;
    }
    let active: Vec<&Run> = i.runs.iter().filter(|r| r.active()).collect();
    if !active.is_empty() {
        if i.policy.spec.concurrency_policy == ConcurrencyPolicy::Forbid {
            skip(
                d,
                format!(
                    "tick at {tick}: run {} is still active (concurrencyPolicy Forbid)",
                    active[0].name
                ),
            );
            d.requeue = d.requeue.min(Duration::from_secs(10));
            return;
        }
        for r in active {
            d.delete.push(r.name.clone());
            d.notes.push(Note {
                reason: PolicyEventReason::RunReplaced,
                warning: false,
                text: format!(
                    "run {} replaced by {name} (concurrencyPolicy Replace)",
                    r.name
                ),
            });
        }
    }
    d.status.last_schedule_time = Some(Time(tick));
    d.status.runs_created += 1;
    d.notes.push(Note {
        reason: PolicyEventReason::RunCreated,
        warning: false,
        text: format!("created run {name} ({})", <&str>::from(cause)),
    });
    d.create = Some(NewRun { name, tick, cause });
}

/// The failure trigger: fires when the count read reaches `atLeast`, at most once a window.
fn on_failures(i: &Inputs, d: &mut Decision) {
    let Some(on) = i.policy.spec.on_failures.as_ref() else {
        return;
    };
    let every = Duration::from_secs(u64::from(on.check_every_seconds));
    d.requeue = d.requeue.min(every);
    let Some(n) = i.failures.filter(|n| *n >= on.at_least) else {
        return;
    };
    if d.create.is_some() || !may_create(i, d) {
        return;
    }
    let minute = Timestamp::from_second(i.now.as_second().div_euclid(60) * 60).unwrap_or(i.now);
    let before = d.create.clone();
    start(i, d, minute, RunCause::Failures);
    if d.create != before {
        d.status.last_failures_time = Some(Time(i.now));
        if let Some(n_note) = d.notes.last_mut() {
            n_note.text.push_str(&format!(
                ": {n} jobs entered the state within {}",
                on.within
            ));
        }
    }
}

/// Deletes finished runs past the history limits, oldest first; never an active run.
fn prune(i: &Inputs, d: &mut Decision) {
    let spec = &i.policy.spec;
    let mut finished: Vec<&Run> = i.runs.iter().filter(|r| !r.active()).collect();
    finished.sort_by_key(|r| std::cmp::Reverse((r.completed, r.tick)));
    let (mut ok, mut failed) = (0u32, 0u32);
    for r in finished {
        let (kept, limit) = match r.phase {
            Some(Phase::Succeeded) => (&mut ok, spec.successful_runs_history_limit),
            _ => (&mut failed, spec.failed_runs_history_limit),
        };
        *kept += 1;
        if *kept > limit && !d.delete.contains(&r.name) {
            d.delete.push(r.name.clone());
        }
        if r.phase == Some(Phase::Succeeded) {
            let t = r.completed.map(Time);
            if t.is_some() && d.status.last_successful_time.as_ref().map(|x| x.0) < r.completed {
                d.status.last_successful_time = t;
            }
        }
    }
}

/// Ready / Reconciling / Stalled / Suspended, the SUSPEND column and observedGeneration.
fn conditions(i: &Inputs, d: &mut Decision) {
    let generation = i.policy.metadata.generation;
    let now = i.now;
    let s = &mut d.status;
    s.observed_generation = generation;
    let broken = schedule(i.policy).err();
    let (suspended, why, text) = match (&s.guard, i.policy.spec.suspend) {
        (Some(t), _) => (
            true,
            Reason::RefailRateHigh.as_str(),
            format!(
                "the loop guard holds the policy: {}% of run {}'s jobs had been retried before",
                t.refailed_percent,
                t.run.as_deref().unwrap_or("?")
            ),
        ),
        (None, true) => (
            true,
            Reason::Suspended.as_str(),
            "spec.suspend is true".to_string(),
        ),
        (None, false) => (false, Reason::Progressing.as_str(), String::new()),
    };
    s.suspend = Some(
        match (&s.guard, i.policy.spec.suspend) {
            (Some(_), _) => "guard",
            (None, true) => "true",
            (None, false) => "false",
        }
        .to_string(),
    );
    let c = &mut s.conditions;
    set_condition(c, SUSPENDED, suspended, why, &text, generation, now);
    let stalled = broken.is_some() || s.guard.is_some();
    let (reason, message) = match &broken {
        Some(m) => (Reason::ScheduleInvalid.as_str(), m.clone()),
        None if s.guard.is_some() => (Reason::RefailRateHigh.as_str(), text.clone()),
        None => ("Ready", "the policy creates its runs".to_string()),
    };
    set_condition(
        c,
        STALLED,
        stalled,
        reason,
        if stalled { &message } else { "" },
        generation,
        now,
    );
    set_condition(c, READY, !stalled, reason, &message, generation, now);
    set_condition(c, RECONCILING, false, "Ready", "", generation, now);
}

/// How long from `now` until `t` (at least a second).
fn until(now: Timestamp, t: Timestamp) -> Duration {
    let secs = t.duration_since(now).as_secs_f64().max(1.0);
    Duration::from_secs_f64(secs.min(MAX_REQUEUE.as_secs_f64()))
}

#[cfg(test)]
mod tests;
