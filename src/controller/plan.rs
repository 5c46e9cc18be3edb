//! Plan step, pure: what this reconcile does, from the loaded object (spec, status,
//! memory), its queue and `now`. Wait for the rate limit, stay suspended (giving back a
//! queue lock), hold on an error, run a batch of ids from the position the record and the
//! status agree on, or run selector pages from a frozen snapshot bound; and what status shows
//! of the run's scope (its key, the jobs it covers, the bound) whatever happens next.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};

use super::{
    error::{LostState, RunError},
    load::{Loaded, OpenQueue, PolicyLink, Queue},
    memory::DryScan,
    rules,
};
use crate::{
    bullmq::{AuditRun, BatchRequest, Ledger, PageRequest, PolicyGuard},
    config::Config,
    crd::{JobRetrySpec, SelectionStatus},
};

/// How long the queue-and-state lock outlives its holder's last page.
pub const LOCK_TTL: Duration = Duration::from_secs(60);

/// What a reconcile does.
pub struct Plan {
    /// What status shows of the run's scope, whatever the step does.
    pub scope: Scope,
    pub step: Step,
}

/// What status shows of a run's scope: its key, the jobs it covers, the queue's release and
/// a selector's frozen snapshot bound (each once known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub run_key: Option<String>,
    pub matched: Option<u64>,
    /// The queue's BullMQ version, once the queue is open: the run has started.
    pub bullmq_version: Option<String>,
    pub selection: Option<SelectionStatus>,
    /// A policy's real run: matched jobs its policy's runs had retried before (the run's total).
    pub refailed: Option<u64>,
}

/// The step a reconcile takes.
pub enum Step {
    /// Nothing runs now: this replica does not lead (the leader's status wins).
    Idle,
    /// The rate limit's pause still holds: no batch may start before it ends.
    Wait(Duration),
    /// The spec asks for a pause; a started selector run gives back its queue's lock.
    Suspend(Option<(OpenQueue, String)>),
    /// The run cannot go on now.
    Hold(RunError),
    /// Batches of ids.
    Ids(Box<IdRun>),
    /// Selector pages.
    Pages(Box<PageRun>),
}

/// An id run's batches from `from` on.
pub struct IdRun {
    pub queue: OpenQueue,
    pub req: BatchRequest,
    pub ids: Vec<String>,
    pub from: u64,
    /// At most this many ids per call (`--batch-size`, within the rate limit).
    pub batch_size: usize,
    /// What the run's recent batches cost: sizes the next ones, within `batch_size`.
    pub cost: rules::PageCost,
    pub jobs_per_second: u32,
}

/// A selector run's pages.
pub struct PageRun {
    pub queue: OpenQueue,
    /// The page call; its budget and a dry run's cursor are set per page.
    pub req: PageRequest,
    /// What the run's recent pages cost (sizes the next ones).
    pub cost: rules::PageCost,
    /// A dry run's scan so far (dry runs only).
    pub dry: Option<DryScan>,
    /// A dry run starts over: what status counted is dropped first.
    pub restart: bool,
    pub jobs_per_second: u32,
}

/// The plan for `loaded` and its `queue`, at `now`.
pub fn plan(loaded: &Loaded, queue: Queue, cfg: &Config, now: Timestamp) -> Plan {
    let spec = &loaded.obj.spec;
    let mut scope = Scope {
        selection: frozen_selection(loaded, now),
        ..Scope::default()
    };
    let paused = loaded
        .memory
        .not_before
        .and_then(|t| t.checked_duration_since(loaded.at));
    if let Some(wait) = paused.filter(|d| !d.is_zero()) {
        return Plan {
            scope,
            step: Step::Wait(wait),
        };
    }
    let open = |queue| match queue {
        Queue::Open(q) => Some(q),
        _ => None,
    };
    if spec.suspend {
        let lock = open(queue).map(|q| (q, loaded.run_key.clone()));
        return Plan {
            scope,
            step: Step::Suspend(lock),
        };
    }
    let ids = match (&spec.job_ids, &spec.selector) {
        (Some(ids), None) => Some(target_ids(ids)),
        (None, Some(_)) => None,
        _ => {
            let step = Step::Hold(RunError::SelectorUnsupported);
            return Plan { scope, step };
        }
    };
    scope.run_key = Some(loaded.run_key.clone());
    scope.matched = ids.as_ref().map(|ids| ids.len() as u64);
    let q = match queue {
        Queue::Closed => {
            return Plan {
                scope,
                step: Step::Idle,
            };
        }
        Queue::Failed(e) => {
            return Plan {
                scope,
                step: Step::Hold(e),
            };
        }
        Queue::Open(q) => q,
    };
    scope.bullmq_version = Some(q.version.label.clone());
    let step = match ids {
        Some(ids) => plan_ids(loaded, q, ids, cfg),
        None => plan_pages(loaded, q, &scope, cfg, now),
    };
    Plan { scope, step }
}

/// How long a period of a policy's per-job retry counts lasts: a page reads the counts of
/// this period and the one before, so a count lives one to two days after the job's last
/// automated retry (then the job may be retried again, up to the cap once more).
pub const POLICY_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A policy's run: its policy's per-job cap and counts, on the queue of `q`.
fn guard(loaded: &Loaded, q: &OpenQueue, now: Timestamp) -> Option<PolicyGuard> {
    match &loaded.policy {
        Some(PolicyLink::Found {
            uid,
            max_retries_per_job,
        }) => Some(PolicyGuard::new(
            &q.keys,
            uid,
            *max_retries_per_job,
            POLICY_PERIOD,
            now.as_millisecond(),
        )),
        _ => None,
    }
}

/// The run's settings for the engine.
fn batch_request(loaded: &Loaded, q: &OpenQueue, cfg: &Config) -> BatchRequest {
    let spec = &loaded.obj.spec;
    BatchRequest {
        state: spec.state,
        version: q.version.clone(),
        reset_attempts_made: spec.reset_attempts_made,
        reset_attempts_started: spec.reset_attempts_started,
        dry_run: spec.dry_run,
        ledger: Ledger {
            key: q.keys.ledger(&loaded.run_key),
            owner: loaded.owner_tag(),
        },
        ledger_ttl: cfg.ledger_retention(),
        record: q.keys.record(&loaded.run_key),
        audit: loaded.obj.audits().then(|| audit_line(loaded)),
    }
}

/// The run's part of each retried job's audit line.
fn audit_line(loaded: &Loaded) -> String {
    let obj = &loaded.obj;
    let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let run = format!("{ns}/{name}");
    // The requester as status froze it, else as recorded on the object.
    let status_requester = obj.status.as_ref().and_then(|s| s.requester.as_deref());
    AuditRun {
        state: obj.spec.state,
        run: &run,
        run_key: &loaded.run_key,
        requester: status_requester.or(obj.requester()),
        reason: obj.spec.reason.as_deref(),
    }
    .line()
}

fn jobs_per_second(spec: &JobRetrySpec) -> u32 {
    spec.rate_limit.as_ref().map_or(0, |r| r.jobs_per_second)
}

/// Where an id run stands: the status's position, unless the record in Redis is behind a
/// status the operator wrote (a lost state). A dry run records nothing and keeps its
/// position in status.
fn plan_ids(loaded: &Loaded, q: OpenQueue, ids: Vec<String>, cfg: &Config) -> Step {
    let spec = &loaded.obj.spec;
    let status = loaded.obj.status.as_ref();
    let in_status = status.and_then(|s| s.processed).unwrap_or(0);
    let from = match spec.dry_run {
        true => in_status,
        false => match rules::position(q.recorded, in_status, loaded.started()) {
            Ok(at) => at,
            Err(uncovered) => {
                return Step::Hold(RunError::Lost(LostState {
                    status_says: format!("{in_status} jobs were processed"),
                    redis_has: format!("the run's record, which covers {}", q.recorded),
                    uncovered,
                }));
            }
        },
    };
    let rate = jobs_per_second(spec);
    Step::Ids(Box::new(IdRun {
        req: batch_request(loaded, &q, cfg),
        queue: q,
        ids,
        from,
        batch_size: batch_size(cfg.batch_size, rate),
        cost: loaded.memory.pages.clone(),
        jobs_per_second: rate,
    }))
}

/// A selector run's pages, within its frozen bound. Real runs take their position from the
/// record in Redis, dry runs from the operator's memory (a dry run writes nothing, so one
/// whose memory is gone scans again from the start).
fn plan_pages(loaded: &Loaded, q: OpenQueue, scope: &Scope, cfg: &Config, now: Timestamp) -> Step {
    let spec = &loaded.obj.spec;
    let Some(sel) = spec.selector.as_ref() else {
        return Step::Hold(RunError::SelectorUnsupported);
    };
    let old = loaded.obj.status.clone().unwrap_or_default();
    let scanned = old.selection.as_ref().map_or(0, |s| s.scanned);
    let remembered = loaded.memory.dry.clone();
    let restart = rules::restart(spec.dry_run, remembered.is_some(), scanned);
    let upper = scope
        .selection
        .as_ref()
        .and_then(|s| s.upper_bound.as_ref());
    let req = PageRequest {
        run: batch_request(loaded, &q, cfg),
        run_key: loaded.run_key.clone(),
        lock_ttl: LOCK_TTL,
        lower: sel.finished_after.as_ref().map(ms_ceil),
        upper: upper.map_or(0, |t| t.0.as_millisecond()),
        max_jobs: sel.max_jobs,
        budget: 0,
        retry_budget: 0,
        success_rows: None,
        want_totals: true,
        dry_cursor: None,
        dry_matched: 0,
        reason_contains: sel.failed_reason_contains.clone(),
        names: sel.names.clone().unwrap_or_default(),
        expected_scanned: if loaded.started() { scanned } else { 0 },
        guard: guard(loaded, &q, now),
    };
    Step::Pages(Box::new(PageRun {
        queue: q,
        req,
        cost: loaded.memory.pages.clone(),
        dry: spec.dry_run.then(|| remembered.unwrap_or_default()),
        restart,
        jobs_per_second: jobs_per_second(spec),
    }))
}

/// A selector run's progress as status shows it, with its snapshot bound frozen now if it is
/// not yet: the first time the operator sees the object, whatever happens next (waiting for
/// the queue, a suspend, an error), so a later start never widens it.
fn frozen_selection(loaded: &Loaded, now: Timestamp) -> Option<SelectionStatus> {
    let sel = loaded.obj.spec.selector.as_ref()?;
    let old = loaded.obj.status.as_ref().and_then(|s| s.selection.clone());
    let old = old.unwrap_or_default();
    let frozen = old.upper_bound.as_ref().map(|t| t.0.as_millisecond());
    let before = sel.finished_before.as_ref().map(ms_ceil);
    let upper = upper_bound(frozen, before, now.as_millisecond());
    Some(SelectionStatus {
        upper_bound: micro_time(upper),
        ..old
    })
}

/// The distinct ids of the run, in order of first appearance.
pub fn target_ids(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// Jobs per batch: the configured size, lowered to the rate limit so that one batch never
/// exceeds a second's allowance.
pub fn batch_size(configured: u64, jobs_per_second: u32) -> usize {
    let limit = if jobs_per_second == 0 {
        configured
    } else {
        configured.min(jobs_per_second.into())
    };
    limit.max(1) as usize
}

/// The next batch after `processed` jobs.
pub fn next_batch(ids: &[String], processed: u64, size: usize) -> &[String] {
    let start = (processed as usize).min(ids.len());
    &ids[start..(start + size).min(ids.len())]
}

/// A time bound as finishedOn compares with it: finishedOn is a whole number of ms, so a
/// bound with a finer fraction is rounded up to the next ms, which selects exactly the same
/// jobs (`finishedOn >= t` and `finishedOn < t` both hold for the same integers).
pub fn ms_ceil(t: &Time) -> i64 {
    let ns = t.0.as_nanosecond();
    ns.div_euclid(1_000_000) as i64 + i64::from(ns.rem_euclid(1_000_000) != 0)
}

/// A bound in ms as status shows it (with its milliseconds).
pub fn micro_time(ms: i64) -> Option<MicroTime> {
    Timestamp::from_millisecond(ms).ok().map(MicroTime)
}

/// A selector run's snapshot: only jobs that finished before this (ms) are candidates; the
/// selector's `finishedBefore`, or the time the operator first saw the object if earlier.
/// Once frozen, it stays.
pub fn upper_bound(frozen: Option<i64>, finished_before: Option<i64>, now: i64) -> i64 {
    frozen.unwrap_or_else(|| finished_before.map_or(now, |b| b.min(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> JobRetrySpec {
        serde_norway::from_str(yaml).unwrap()
    }

    const IDS: &str =
        "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['1','2','3']\n";

    #[test]
    fn plans_ids_in_batches() {
        let s = spec(IDS);
        let ids = target_ids(s.job_ids.as_deref().unwrap());
        assert_eq!(next_batch(&ids, 0, 2), ["1", "2"]);
        assert_eq!(next_batch(&ids, 2, 2), ["3"]);
        assert!(next_batch(&ids, 3, 2).is_empty());
        assert!(next_batch(&ids, 9, 2).is_empty());
    }

    #[test]
    fn an_id_listed_twice_is_planned_once() {
        let s = spec(
            "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['7','3','7','1','3']\n",
        );
        assert_eq!(target_ids(s.job_ids.as_deref().unwrap()), ["7", "3", "1"]);
    }

    #[test]
    fn rate_limit_caps_the_batch() {
        assert_eq!(batch_size(500, 0), 500);
        assert_eq!(batch_size(500, 20), 20);
        assert_eq!(batch_size(500, 2000), 500);
    }

    #[test]
    fn the_snapshot_is_the_earlier_of_finished_before_and_the_start_and_stays() {
        assert_eq!(upper_bound(None, None, 5_000), 5_000);
        assert_eq!(upper_bound(None, Some(3_000), 5_000), 3_000);
        assert_eq!(upper_bound(None, Some(9_000), 5_000), 5_000);
        assert_eq!(upper_bound(Some(4_000), Some(3_000), 9_000), 4_000);
    }

    #[test]
    fn time_bounds_round_up_to_the_next_whole_millisecond() {
        let t = |s: &str| Time(s.parse().unwrap());
        assert_eq!(ms_ceil(&t("2026-11-28T10:00:00Z")), 1_795_860_000_000);
        assert_eq!(ms_ceil(&t("2026-11-28T10:00:00.123Z")), 1_795_860_000_123);
        assert_eq!(
            ms_ceil(&t("2026-11-28T10:00:00.1230001Z")),
            1_795_860_000_124
        );
        assert_eq!(
            ms_ceil(&t("2026-11-28T10:00:00.999999Z")),
            1_795_860_001_000
        );
        assert_eq!(ms_ceil(&t("1969-12-31T23:59:59.9995Z")), 0);
        let shown = serde_json::to_string(&micro_time(1_795_860_000_123)).unwrap();
        assert!(shown.contains("10:00:00.123"), "{shown}");
    }
}
