//! Execute step (IO): runs what the plan says, batches of ids or selector pages, each one
//! atomic Redis call, for at most one status interval, and reports what happened as
//! [`Progress`]. Between calls it asks the pure rules (`rules::PageCost`: the next page's size) and
//! checks that it may go on: this replica still leads, the object was not suspended,
//! deleted or replaced (the watch cache, no API call per batch), and a Sentinel's master did
//! not move.
//!
//! Guarantees: a call that fails ends the slice with nothing half-done (each call is atomic);
//! a real selector run that stops (suspended, deleted) gives the queue's lock back at once;
//! nothing here builds a status or changes the object's memory (that is `machine::step`).

use std::{collections::BTreeMap, time::Instant};

use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tracing::{info, warn};

use super::{
    context::Context,
    error::{LostState, RunError},
    load::{Loaded, OpenQueue},
    machine::{End, PagesProgress, Progress},
    plan::{self, IdRun, PageRun, Plan, Step},
};
use crate::{
    bullmq::{self, JobOutcome, Page, PageOutcome},
    crd::{JobResultRow, JobRetryStatus, SelectionStatus, SourceState},
    metrics::Script,
    status,
};

/// Runs `plan` for `loaded`.
pub async fn execute(plan: Plan, loaded: &Loaded, ctx: &Context) -> Progress {
    let mut progress = Progress::new(plan.scope);
    progress.end = match plan.step {
        Step::Idle => End::Idle,
        Step::Wait(d) => End::Wait(d),
        Step::Suspend(lock) => {
            if let Some((mut q, run_key)) = lock {
                release_lock(ctx, &mut q, loaded.obj.spec.state, &run_key).await;
            }
            End::Suspended
        }
        Step::Hold(e) => End::Error(e),
        Step::Ids(run) => run_ids(run, loaded, ctx, &mut progress).await,
        Step::Pages(run) => run_pages(run, loaded, ctx, &mut progress).await,
    };
    progress
}

/// Runs batches until the run is done, the status interval is used up, the rate limit asks
/// for a pause, or the run must stop; each batch is sized by what the recent ones cost
/// (`rules::PageCost`, every id counted as examined and matched), within `--batch-size`.
async fn run_ids(mut run: Box<IdRun>, loaded: &Loaded, ctx: &Context, p: &mut Progress) -> End {
    let end = id_batches(&mut run, loaded, ctx, p).await;
    p.cost = Some(std::mem::take(&mut run.cost));
    end
}

async fn id_batches(run: &mut IdRun, loaded: &Loaded, ctx: &Context, p: &mut Progress) -> End {
    let deadline = Instant::now() + ctx.config.status_interval();
    let state = run.req.state;
    p.processed_before = Some(run.from);
    loop {
        let done = run.from + p.rows.len() as u64;
        let (_, fits) = run.cost.budgets(run.jobs_per_second);
        let size = run.batch_size.min(fits as usize).max(1);
        let batch = plan::next_batch(&run.ids, done, size);
        if batch.is_empty() {
            return End::Done;
        }
        if let Err(e) = check_master(ctx, &mut run.queue).await {
            return End::Error(e);
        }
        let started = Instant::now();
        let after = done + batch.len() as u64;
        let q = &mut run.queue;
        let call = ctx
            .engine
            .retry_batch(&mut q.conn, &q.keys, &run.req, batch, after);
        let outcomes = match call.await {
            Ok(o) => o,
            Err(e) => return End::Error(call_failed(ctx, q, e)),
        };
        let n = batch.len() as u64;
        run.cost.observe(n, n, started.elapsed());
        let rows = batch.iter().zip(&outcomes).map(|(id, o)| (id.as_str(), o));
        add_rows(ctx, p, Script::Retry, started, rows, None, state);
        if run.jobs_per_second > 0 || Instant::now() >= deadline || stopped_meanwhile(ctx, loaded) {
            return End::Batches {
                last_batch: batch.len(),
            };
        }
    }
}

/// Runs selector pages until the run is done, the status interval is used up, the rate
/// limit asks for a pause, or the run must stop; each page is sized by what the recent ones
/// cost (`rules::PageCost`). A real run's pages reply with success rows only while the run
/// is within the status's row limit, and with the run's totals only on the slice's first
/// page (the later ones add their calls' counts to them).
async fn run_pages(mut run: Box<PageRun>, loaded: &Loaded, ctx: &Context, p: &mut Progress) -> End {
    let deadline = Instant::now() + ctx.config.status_interval();
    let old = loaded.obj.status.clone().unwrap_or_default();
    let dry_run = run.req.run.dry_run;
    let mut processed = old.processed.unwrap_or(0);
    let mut pages = PagesProgress {
        restart: run.restart,
        cost: std::mem::take(&mut run.cost),
        dry: run.dry.take(),
        ..PagesProgress::default()
    };
    let end = loop {
        (run.req.budget, run.req.retry_budget) = pages.cost.budgets(run.jobs_per_second);
        if !dry_run {
            let row_limit = ctx.config.status_row_limit;
            run.req.success_rows = Some(row_limit.saturating_sub(processed));
            run.req.want_totals = pages.counts.is_none();
        }
        if let Some(d) = &pages.dry {
            (run.req.dry_cursor, run.req.dry_matched) = (d.cursor.clone(), d.matched);
        }
        if let Err(e) = check_master(ctx, &mut run.queue).await {
            break End::Error(e);
        }
        let started = Instant::now();
        let q = &mut run.queue;
        let page = match ctx.selector.page(&mut q.conn, &q.keys, &run.req).await {
            Ok(PageOutcome::Page(page)) => *page,
            Ok(PageOutcome::Busy(holder)) => {
                let state = run.req.run.state;
                break End::Error(RunError::QueueBusy { holder, state });
            }
            Ok(PageOutcome::Lost { scanned, matched }) => {
                break End::Error(RunError::Lost(lost(&old, scanned, matched)));
            }
            Err(e) => break End::Error(call_failed(ctx, q, e)),
        };
        pages
            .cost
            .observe(page.call_scanned, page.call_matched, started.elapsed());
        pages.calls += 1;
        processed = page.matched;
        let in_page = page.call_matched as usize;
        if take_page(ctx, p, &mut pages, &run, started, page) {
            break End::Done;
        }
        if run.jobs_per_second > 0 || Instant::now() >= deadline || stopped_meanwhile(ctx, loaded) {
            if !run.req.run.dry_run && object_stopped(ctx, loaded) {
                let state = run.req.run.state;
                release_lock(ctx, &mut run.queue, state, &run.req.run_key).await;
            }
            break End::Batches {
                last_batch: in_page,
            };
        }
    };
    p.pages = Some(pages);
    end
}

/// Adds one page's rows, counts and position to the slice's progress; whether the run is
/// done.
fn take_page(
    ctx: &Context,
    p: &mut Progress,
    pages: &mut PagesProgress,
    run: &PageRun,
    started: Instant,
    page: Page,
) -> bool {
    let dry_run = run.req.run.dry_run;
    if p.processed_before.is_none() {
        let first = page.matched.saturating_sub(page.call_matched);
        let restarted = dry_run && pages.restart;
        p.processed_before = Some(if restarted { 0 } else { first });
    }
    let state = run.req.run.state;
    let rows = page.rows.iter().map(|(id, o)| (id.as_str(), o));
    add_rows(
        ctx,
        p,
        Script::Select,
        started,
        rows,
        Some(&page.counts),
        state,
    );
    if !dry_run {
        // The record's totals, or the last ones plus this call's counts (exact: the script
        // adds exactly these to the record, under the run's lock).
        let (base, add) = match run.req.want_totals {
            true => (BTreeMap::new(), &page.totals),
            false => (pages.counts.take().unwrap_or_default(), &page.counts),
        };
        let mut counts = base;
        for (o, n) in add {
            *counts
                .entry(status::result_of(o).as_str().to_string())
                .or_insert(0) += n;
        }
        pages.counts = Some(counts);
    }
    p.scope.matched = Some(page.matched);
    if run.req.guard.is_some() && !dry_run {
        p.scope.refailed = Some(page.refailed);
    }
    // A real run's record counts what it scanned; a dry run counts it here.
    let (mut scanned, mut unexamined) = (page.scanned, page.unexamined);
    if let Some(d) = pages.dry.as_mut() {
        d.add(&page);
        (scanned, unexamined) = (d.scanned, d.unexamined);
        pages.preview = Some(d.preview());
    }
    p.scope.selection = Some(SelectionStatus {
        upper_bound: plan::micro_time(page.upper),
        scanned,
        remaining: page.remaining,
        unexamined,
    });
    page.done
}

/// Adds the rows of one call to the progress and counts the call's results in the metrics:
/// `counts` (a page's, whose rows may leave successes out), else the rows.
fn add_rows<'a>(
    ctx: &Context,
    p: &mut Progress,
    script: Script,
    started: Instant,
    outcomes: impl Iterator<Item = (&'a str, &'a JobOutcome)>,
    counts: Option<&[(JobOutcome, u64)]>,
    state: SourceState,
) {
    let outcomes: Vec<_> = outcomes.collect();
    let rows: Vec<JobResultRow> = outcomes
        .iter()
        .map(|(id, o)| status::job_row(id, o, state.as_str()))
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let results: Vec<_> = match counts {
        Some(counts) => counts
            .iter()
            .map(|(o, n)| (status::result_of(o), *n))
            .collect(),
        None => outcomes
            .iter()
            .map(|(_, o)| (status::result_of(o), 1))
            .collect(),
    };
    ctx.metrics.batch_done(script, seconds, results.into_iter());
    p.rows.extend(rows);
    p.last_batch_started = Some(started);
}

/// The lost state of a selector run whose record in Redis is missing or behind its status.
fn lost(old: &JobRetryStatus, scanned: Option<u64>, matched: u64) -> LostState {
    let in_status = old.selection.as_ref().map_or(0, |s| s.scanned);
    let processed = old.processed.unwrap_or(0);
    let (redis_has, covered) = match scanned {
        None => ("no record of it".to_string(), 0),
        Some(n) => (
            format!("a record that has scanned {n} jobs and matched {matched}"),
            matched,
        ),
    };
    LostState {
        status_says: format!("{in_status} jobs were scanned and {processed} processed"),
        redis_has,
        uncovered: processed.saturating_sub(covered),
    }
}

/// A failed call: its connection is dropped (the next reconcile opens a new one), and the
/// error names no secret of the target.
fn call_failed(ctx: &Context, q: &OpenQueue, e: bullmq::Error) -> RunError {
    if e.is_redis() {
        ctx.metrics.redis_failed(e.category());
        ctx.drop_connection(&q.target);
    }
    RunError::Redis(e)
}

/// Before each batch or page: a Sentinel failover since the connection opened makes the run
/// reconnect to the new master rather than write to the old one (whose writes the new
/// master never sees). Transient: the next slice opens the new master, where the run's
/// record shows whether anything acknowledged was lost.
async fn check_master(ctx: &Context, q: &mut OpenQueue) -> Result<(), RunError> {
    match q.conn.master_moved().await {
        Ok(None) => Ok(()),
        Ok(Some((was, now))) => {
            info!(%was, %now, "the Sentinel's master moved; reconnecting");
            ctx.drop_connection(&q.target);
            Err(RunError::MasterMoved { was, now })
        }
        Err(e) => Err(call_failed(ctx, q, e)),
    }
}

/// Whether the run must stop between calls: this replica lost the Lease or is shutting
/// down, or the object was suspended, deleted or replaced.
fn stopped_meanwhile(ctx: &Context, loaded: &Loaded) -> bool {
    ctx.gate.should_pause() || object_stopped(ctx, loaded)
}

/// Whether the object was suspended, deleted or replaced since this reconcile began, as the
/// controller's watch cache sees it.
fn object_stopped(ctx: &Context, loaded: &Loaded) -> bool {
    let key = ObjectRef::new(&loaded.obj.name_any()).within(&loaded.ns);
    ctx.store.get(&key).is_none_or(|o| {
        o.spec.suspend
            || o.metadata.deletion_timestamp.is_some()
            || o.uid().as_deref() != Some(loaded.uid.as_str())
    })
}

/// Releases the queue-and-state lock if `run_key` holds it: the run stops (suspended or
/// deleted), and the next run on the queue need not wait for the lock to expire.
pub async fn release_lock(ctx: &Context, q: &mut OpenQueue, state: SourceState, run_key: &str) {
    let state = state.as_str();
    match ctx
        .selector
        .unlock(&mut q.conn, &q.keys, state, run_key)
        .await
    {
        Ok(true) => info!("released the queue's {state} lock: the run stopped"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot release the queue's lock; it expires by itself"),
    }
}
