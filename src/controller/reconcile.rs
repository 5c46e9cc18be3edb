//! One reconcile of one JobRetry, as a named pipeline:
//!
//! 1. `load` (IO): the object from a fresh GET, its memory, and its queue when it may run;
//! 2. `plan` (pure): what to do now, from spec, status, memory and `now`;
//! 3. `execute` (IO): batches or selector pages for at most one status interval;
//! 4. `machine::step` (pure): the next status, memory, requeue and events;
//! 5. `record` (IO): the gated status write, the memory, metrics and events.
//!
//! Each reconcile works for at most one status interval, then writes status and requeues, so
//! progress is visible while a run goes on and a suspend or delete stops it between batches.
//! Guarantees: a JobRetry in a terminal phase is never executed again; the status cursor is
//! read from a fresh GET, never from a possibly stale cache; a slice's status is written only
//! to the object it was computed for, never to one re-created under the same name.

use std::{sync::Arc, time::Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use tracing::{Instrument, Span, info_span};

use super::{
    context::Context,
    error::Error,
    execute,
    load::{self, Queue},
    machine::{self, Facts},
    plan, record, rules,
};
use crate::crd::JobRetry;

/// Reconciles one JobRetry, in its run's span (every line it logs names the object and its
/// run key), timing it.
pub async fn reconcile(obj: Arc<JobRetry>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A follower does nothing; when it starts to lead it reconciles every object again.
    if !ctx.gate.holds() {
        return Ok(Action::await_change());
    }
    ctx.metrics.reconcile_started();
    let started = Instant::now();
    let result = reconcile_once(&obj, &ctx).instrument(run_span(&obj)).await;
    ctx.metrics.reconcile_done(started.elapsed().as_secs_f64());
    result
}

/// The pipeline, each step marked IO or pure.
async fn reconcile_once(obj: &JobRetry, ctx: &Context) -> Result<Action, Error> {
    let Some((loaded, queue)) = load::load(obj, ctx).await? else {
        return Ok(Action::await_change()); // over, or gone
    }; // IO
    let now = Timestamp::now();
    let plan = plan::plan(&loaded, queue, &ctx.config, now); // pure
    let progress = execute::execute(plan, &loaded, ctx).await; // IO
    let old = loaded.obj.status.clone().unwrap_or_default();
    let facts = facts(&loaded.obj, &loaded.uid, ctx);
    let next = machine::step(&old, &loaded.memory, &facts, progress, now); // pure
    record::record(&loaded, next, ctx).await // IO
}

/// Gives back the queue's lock of a deleted object's selector run, if it held it: a delete
/// triggers no reconcile (the object is gone), so the watch hands deleted objects here.
pub async fn release_deleted(obj: JobRetry, ctx: Arc<Context>) {
    let span = run_span(&obj);
    let give_back = async {
        if let Ok(Some((loaded, Queue::Open(mut q)))) = load::deleted(obj, &ctx).await {
            let state = loaded.obj.spec.state;
            execute::release_lock(&ctx, &mut q, state, &loaded.run_key).await;
        }
    };
    give_back.instrument(span).await;
}

/// What the state machine needs of the object besides its status.
fn facts(obj: &JobRetry, uid: &str, ctx: &Context) -> Facts {
    let row_limit = ctx.config.status_row_limit as usize;
    Facts {
        jitter_seed: Some(rules::jitter_seed(uid)),
        requester: obj.requester().map(str::to_string),
        ..Facts::new(&obj.spec, obj.metadata.generation, row_limit)
    }
}

/// The span of everything logged about `obj`'s run: its namespace, name and run key.
pub fn run_span(obj: &JobRetry) -> Span {
    let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let run_key = obj.run_key();
    info_span!("reconcile", namespace = %ns, jobretry = %name, %run_key)
}
