//! The selector path of a slice: pages of the source state's set (`bullmq::Selector`), each
//! one atomic Redis call that filters, retries and advances the run's cursor, as many as one
//! status interval allows; each page's size adapts so that no call keeps Redis busy long.
//!
//! Guarantees: the snapshot bound is frozen the first time the operator sees the object
//! (`Run::slice`), and a real run's record keeps the bound of its first page; real runs take
//! their position from the record in Redis, dry runs from the operator's memory (a dry run
//! writes nothing, so a restarted operator scans it again from the start); a real run whose
//! record is missing or behind its status stops (`RunStateLost`) instead of going on from
//! wherever the connection now leads; a run that stops (suspended, deleted) releases the
//! queue's lock at once.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{OpenQueue, Run};
use crate::{
    bullmq::{BatchRequest, PageOutcome, PageRequest, select::next_budget},
    controller::{
        machine::{RunError, Slice, SliceResult},
        plan::{self, DryScan},
    },
    crd::JobRetryStatus,
    crd::{SelectionStatus, Selector},
    metrics::Script,
    status,
};

/// Each page call should keep Redis busy about this long at most.
const PAGE_TARGET: Duration = Duration::from_millis(2);
/// Jobs examined per page: at first, and the bounds the adaptation keeps to. The first page
/// starts small: its speed is unknown (500 jobs at the 15 us/job measured on a 1M-job queue are
/// already 7.5 ms of script, before cold memory); the budget grows by half per fast page.
const PAGE_FIRST: u32 = 50;
const PAGE_MIN: u32 = 20;
const PAGE_MAX: u32 = 2_000;
/// How long the queue-and-state lock outlives its holder's last page.
const LOCK_TTL: Duration = Duration::from_secs(60);

/// The message of a selector run whose record in Redis is missing or behind its status.
fn lost_message(old: &JobRetryStatus, scanned: Option<u64>, matched: u64) -> String {
    let in_status = old.selection.as_ref().map_or(0, |s| s.scanned);
    let processed = old.processed.unwrap_or(0);
    let says = format!("{in_status} jobs were scanned and {processed} processed");
    let (has, covered) = match scanned {
        None => ("no record of it".to_string(), 0),
        Some(n) => (
            format!("a record that has scanned {n} jobs and matched {matched}"),
            matched,
        ),
    };
    plan::lost_state(&says, &has, processed.saturating_sub(covered))
}

impl Run {
    /// Runs selector pages until the run is done, the status interval is used up, the rate
    /// limit asks for a pause, or the object was suspended or deleted meanwhile.
    pub(super) async fn select(
        &mut self,
        sel: &Selector,
        q: &mut OpenQueue,
        run: &BatchRequest,
        run_key: &str,
        slice: &mut Slice,
    ) {
        let old = self.obj.status.clone().unwrap_or_default();
        let upper = slice
            .selection
            .as_ref()
            .and_then(|s| s.upper_bound.as_ref())
            .map_or(0, |t| t.0.as_millisecond());
        let mut dry = self.ctx.objects.dry_scan(&self.uid);
        if run.dry_run && dry.is_none() {
            // Nothing of an earlier scan is left: start over (and say so if it had begun).
            slice.restart = old.selection.as_ref().is_some_and(|s| s.scanned > 0);
            dry = Some(DryScan::default());
        }
        let rate = self.jobs_per_second();
        let mut budget = self.ctx.objects.memory(&self.uid).budget;
        let deadline = Instant::now() + self.ctx.config.status_interval();
        let mut req = PageRequest {
            run: run.clone(),
            run_key: run_key.to_string(),
            lock_ttl: LOCK_TTL,
            lower: sel.finished_after.as_ref().map(plan::ms_ceil),
            upper,
            max_jobs: sel.max_jobs,
            budget: 0,
            dry_cursor: None,
            dry_matched: 0,
            reason_contains: sel.failed_reason_contains.clone(),
            names: sel.names.clone().unwrap_or_default(),
            expected_scanned: match self.started() {
                true => old.selection.as_ref().map_or(0, |s| s.scanned),
                false => 0,
            },
        };
        loop {
            budget = if budget == 0 { PAGE_FIRST } else { budget };
            req.budget = if rate > 0 { budget.min(rate) } else { budget };
            if let Some(d) = &dry {
                req.dry_cursor = d.cursor.clone();
                req.dry_matched = d.matched;
            }
            if let Err(e) = self.check_master(q).await {
                slice.result = SliceResult::Error(e);
                return;
            }
            let started = Instant::now();
            let page = match self.ctx.selector.page(&mut q.conn, &q.keys, &req).await {
                Ok(PageOutcome::Page(p)) => p,
                Ok(PageOutcome::Busy(holder)) => {
                    let m = format!(
                        "another selector run ({holder}) is retrying {} jobs of this queue; this one starts when it ends",
                        run.state.as_str()
                    );
                    slice.result = SliceResult::Error(RunError::QueueBusy(m));
                    return;
                }
                Ok(PageOutcome::Lost { scanned, matched }) => {
                    let m = lost_message(&old, scanned, matched);
                    slice.result = SliceResult::Error(RunError::RunStateLost(m));
                    return;
                }
                Err(e) => {
                    slice.result = SliceResult::Error(self.engine_failed(e, &q.target));
                    return;
                }
            };
            let took = started.elapsed();
            budget = next_budget(budget, took, PAGE_TARGET, PAGE_MIN, PAGE_MAX);
            self.ctx.set_budget(&self.uid, budget);
            if slice.processed_before.is_none() {
                let first = page.matched.saturating_sub(page.rows.len() as u64);
                slice.processed_before = Some(if run.dry_run && slice.restart {
                    0
                } else {
                    first
                });
            }
            let rows: Vec<_> = page
                .rows
                .iter()
                .map(|(id, o)| status::job_row(id, o, run.state.as_str()))
                .collect();
            self.ctx.metrics.batch_done(
                Script::Select,
                took.as_secs_f64(),
                rows.iter().map(|r| r.result.as_str()),
            );
            let in_page = rows.len();
            slice.rows.extend(rows);
            if !run.dry_run {
                let counts = page.totals.iter().map(|(o, n)| {
                    let row = status::job_row("", o, run.state.as_str());
                    (row.result, *n)
                });
                slice.counts = Some(counts.collect());
            }
            slice.matched = Some(page.matched);
            // A real run's record counts what it scanned; a dry run counts it here.
            let mut scanned = page.scanned;
            if let Some(d) = dry.as_mut() {
                d.add(&page);
                scanned = d.scanned;
                slice.preview = Some(d.preview());
            }
            slice.selection = Some(SelectionStatus {
                upper_bound: plan::micro_time(page.upper),
                scanned,
                remaining: page.remaining,
                unexamined: dry.as_ref().map_or(page.unexamined, |d| d.unexamined),
            });
            self.last_batch_started = Some(started);
            if page.done {
                slice.result = SliceResult::Done;
                self.ctx.objects.set_dry_scan(&self.uid, None);
                return;
            }
            if rate > 0 || Instant::now() >= deadline || self.stopped_meanwhile() {
                slice.result = SliceResult::Batches {
                    last_batch: in_page,
                };
                self.ctx.objects.set_dry_scan(&self.uid, dry);
                if !run.dry_run && self.object_stopped() {
                    self.release_lock(q, run, run_key).await;
                }
                return;
            }
        }
    }

    /// Releases the queue-and-state lock if this run holds it: the run stops (suspended or
    /// deleted), and the next run on the queue need not wait for the lock to expire.
    pub(super) async fn release_lock(&self, q: &mut OpenQueue, run: &BatchRequest, run_key: &str) {
        let state = run.state.as_str();
        match self
            .ctx
            .selector
            .unlock(&mut q.conn, &q.keys, state, run_key)
            .await
        {
            Ok(true) => info!("released the queue's {state} lock: the run stopped"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot release the queue's lock; it expires by itself")
            }
        }
    }
}
