//! The JobRetry controller: `run()` wires the watch, `reconcile` drives one object a step,
//! `error_policy` decides how soon to retry.
//!
//! A reconcile reads as a short pipeline (see `reconcile.rs`): load → plan → execute → record;
//! what a slice's result means for the run (status, requeue, events) is the pure state
//! machine's (`machine.rs`).

pub mod cache;
pub mod census;
mod context;
pub mod error;
mod execute;
mod load;
pub mod machine;
mod memory;
pub mod plan;
mod reconcile;
mod record;
pub mod rules;
pub mod secret;

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        reflector::{self, reflector},
        watcher::{self, watcher},
    },
};
use tracing::{debug, info, warn};

pub use self::context::{Connections, Context, recorder};
use self::{error::Error, reconcile::run_span};
use crate::{config::Config, crd::JobRetry, http::Health, leader::Gate};

/// Retries transient errors with backoff (the state machine's memory of failed tries);
/// permanent ones wait for the object to change.
fn error_policy(obj: Arc<JobRetry>, err: &Error, ctx: Arc<Context>) -> Action {
    let _run = run_span(&obj).entered();
    let category: &str = err.category().into();
    warn!(category, error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(err.category());
    if !err.is_transient() {
        return Action::await_change();
    }
    let uid = obj.uid().unwrap_or_default();
    let (memory, delay) = machine::reconcile_failed(&ctx.memory.memory(&uid), &uid);
    ctx.memory.remember(&uid, memory);
    Action::requeue(delay)
}

/// How often the memory of objects deleted meanwhile is dropped.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Now and then drops what is remembered of objects deleted meanwhile (a delete triggers no
/// reconcile); ends with the controller. It does not wait for the cache to be filled
/// (`Store::wait_until_ready` wakes only its last waiter, and the controller waits on it):
/// memory is only ever kept for objects a reconcile saw, which were in the cache then, and
/// the cache swaps in a relist whole, so an object missing from it was deleted.
async fn forget_departed(ctx: Weak<Context>) {
    let mut tick = tokio::time::interval(FORGET_INTERVAL);
    loop {
        tick.tick().await;
        match ctx.upgrade() {
            Some(ctx) => ctx.memory.retain_cached(&ctx.store),
            None => return,
        }
    }
}

/// Gives back the queue locks of selector runs deleted while running; ends with the
/// controller.
async fn release_deleted_locks(
    mut deleted: tokio::sync::mpsc::UnboundedReceiver<JobRetry>,
    ctx: Weak<Context>,
) {
    while let Some(obj) = deleted.recv().await {
        let Some(ctx) = ctx.upgrade() else { return };
        reconcile::release_deleted(obj, ctx).await;
    }
}

/// The watch of JobRetry objects into a cache of slimmed objects (cache.rs: memory stays
/// small with many big ones). Ready once the cache has synced: the watch's first full list
/// is in it (InitDone), so a replica that takes the Lease starts from every object (not
/// through `Store::wait_until_ready()`: its one-shot wakes only the last task that waited,
/// and the controller itself waits on it). Deleted objects go to `deleted` (a delete
/// triggers no reconcile).
fn watch(
    api: Api<JobRetry>,
    health: Arc<Health>,
    deleted: tokio::sync::mpsc::UnboundedSender<JobRetry>,
) -> (
    reflector::store::Writer<JobRetry>,
    impl futures::Stream<Item = Result<watcher::Event<JobRetry>, watcher::Error>>,
) {
    let writer = reflector::store::Writer::default();
    let watch = watcher(api, watcher::Config::default().any_semantic())
        .modify(cache::slim)
        .inspect(move |event| match event {
            Ok(watcher::Event::InitDone) => health.readiness.synced(),
            Ok(watcher::Event::Delete(obj)) => {
                let _ = deleted.send(obj.clone());
            }
            _ => {}
        });
    (writer, watch)
}

/// What the controller reports of a reconcile it ran (errors are logged by `error_policy`
/// in the run's span); a failing watch makes the replica not ready.
fn reconciled<T, E: std::error::Error, Q: std::error::Error>(
    res: Result<T, controller::Error<E, Q>>,
    health: &Health,
) {
    match res {
        Ok(_) => {}
        Err(controller::Error::QueueError(e)) => {
            warn!(error = %e, "watching JobRetry objects failed; not ready until the watch works again");
            health.readiness.watch_failed();
        }
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(e @ controller::Error::ObjectNotFound(_)) => {
            debug!(error = %e, "object gone before its reconcile")
        }
        Err(e) => warn!(error = %e, "controller error"),
    }
}

/// Runs the controller until `shutdown` resolves and the running reconciles have ended;
/// marks `health` ready once its cache has synced. Every replica watches; only the one
/// `gate` lets through retries, and each time it starts to lead it reconciles every object.
pub async fn run(
    client: Client,
    config: Config,
    health: Arc<Health>,
    gate: Arc<Gate>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<JobRetry> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let (writer, watch) = watch(api, health.clone(), deleted_tx);
    let reader = writer.as_reader();
    let controller = Controller::for_stream(reflector(writer, watch).applied_objects(), reader)
        .with_config(controller::Config::default().concurrency(config.max_concurrent_runs));
    let store = controller.store();
    health.metrics.observe_runs({
        let store = store.clone();
        move || census::count_runs(&store.state())
    });
    let acquired = gate.acquired();
    let ctx = Arc::new(Context::new(
        client,
        config,
        health.metrics.clone(),
        store.clone(),
        gate,
    ));
    tokio::spawn(forget_departed(Arc::downgrade(&ctx)));
    tokio::spawn(release_deleted_locks(deleted_rx, Arc::downgrade(&ctx)));
    info!("starting jobretry-operator controller");
    controller
        .reconcile_all_on(acquired)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|res| {
            let health = health.clone();
            async move { reconciled(res, &health) }
        })
        .await;
    info!("controller stopped");
}
