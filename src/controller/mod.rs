//! The JobRetry controller: `run()` wires the watch, `reconcile` drives one object a step,
//! `error_policy` decides how soon to retry.
//!
//! A reconcile reads as a short pipeline (see `reconcile.rs`): load → plan → execute → record;
//! what a slice's result means for the run (status, requeue, events) is the pure state
//! machine's (`machine.rs`).

mod cache;
pub mod census;
mod load;
pub mod machine;
mod objects;
pub mod plan;
mod reconcile;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, Store, reflector},
        watcher::{self, watcher},
    },
};
use strum::IntoEnumIterator;
use tracing::{Span, debug, info, info_span, warn};

use self::objects::{Memory, ObjectMemory};
use crate::{
    bullmq::{self, RedisConn, RedisTarget, RetryEngine, Selector},
    config::Config,
    crd::JobRetry,
    error::Error,
    http::Health,
    leader::Gate,
    metrics::Metrics,
};

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub engine: RetryEngine,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The controller's cache of JobRetry objects: what a run checks between batches.
    pub store: Store<JobRetry>,
    /// Per object (uid): what a run keeps between reconciles besides its status.
    objects: ObjectMemory,
    /// Open Redis connections by target, reused across reconciles and objects.
    connections: Mutex<HashMap<u64, RedisConn>>,
    /// Runs selector pages.
    pub selector: Selector,
    /// Connection Secrets read in the last seconds.
    secrets: load::SecretCache,
    /// Whether this replica leads: asked before every batch, page and status write.
    pub gate: Arc<Gate>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        store: Store<JobRetry>,
        gate: Arc<Gate>,
    ) -> Self {
        let reporter = Reporter {
            controller: "jobretry-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            engine: RetryEngine::default(),
            config,
            metrics,
            store,
            objects: ObjectMemory::default(),
            connections: Mutex::default(),
            selector: Selector::default(),
            secrets: load::SecretCache::default(),
            gate,
        }
    }

    /// Keeps the page budget of object `uid`'s selector run.
    fn set_budget(&self, uid: &str, budget: u32) {
        let mut memory = self.objects.memory(uid);
        memory.budget = budget;
        self.objects.remember(uid, memory);
    }

    /// Records one more failed reconcile of `uid`; returns the delay before the next try.
    fn backoff(&self, uid: &str) -> Duration {
        let mut memory = self.objects.memory(uid);
        memory.failures = memory.failures.saturating_add(1);
        self.objects.remember(uid, memory);
        machine::backoff(memory.failures)
    }

    /// A connection to `target`: a cached one, or a new one that is then cached.
    async fn connection(&self, target: &RedisTarget) -> Result<RedisConn, bullmq::Error> {
        let key = target.cache_key();
        let cached = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let conn = target.connect().await?;
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, conn.clone());
        Ok(conn)
    }

    /// Forgets the cached connection to `target` (after a Redis error).
    fn drop_connection(&self, target: &RedisTarget) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&target.cache_key());
    }

    /// How long the rate limit still holds back the next batch of `uid`.
    fn wait_for_rate_limit(&self, uid: &str) -> Option<Duration> {
        self.objects
            .memory(uid)
            .not_before
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// The span of everything logged about `obj`'s run: its namespace, name and run key.
pub fn run_span(obj: &JobRetry) -> Span {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let run_key = plan::run_key(&obj.spec, &ns, &name);
    info_span!("reconcile", namespace = %ns, jobretry = %name, %run_key)
}

/// Retries transient errors with backoff; permanent ones wait for the object to change.
fn error_policy(obj: Arc<JobRetry>, err: &Error, ctx: Arc<Context>) -> Action {
    let _run = run_span(&obj).entered();
    warn!(category = err.category(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(err.category());
    if err.is_transient() {
        Action::requeue(ctx.backoff(&obj.uid().unwrap_or_default()))
    } else {
        Action::await_change()
    }
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
            Some(ctx) => ctx.objects.retain_cached(&ctx.store),
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
    // The watch cache keeps slimmed objects (cache.rs): memory stays small with many big ones.
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    // Ready once the cache has synced: the watch's first full list is in it (InitDone), so
    // a replica that takes the Lease starts from every object. Not through
    // `Store::wait_until_ready()`: its one-shot wakes only the last task that waited, and
    // the controller itself waits on it.
    // Deleted objects go to `release_deleted_locks` (a delete triggers no reconcile).
    let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = watcher(api.clone(), watcher::Config::default().any_semantic())
        .modify(cache::slim)
        .inspect({
            let health = health.clone();
            move |event| match event {
                Ok(watcher::Event::InitDone) => health.readiness.synced(),
                Ok(watcher::Event::Delete(obj)) => {
                    let _ = deleted_tx.send(obj.clone());
                }
                _ => {}
            }
        });
    let controller = Controller::for_stream(reflector(writer, watch).applied_objects(), reader)
        .with_config(controller::Config::default().concurrency(config.max_concurrent_runs));
    let store = controller.store();
    let redis_categories: Vec<&'static str> = bullmq::Category::iter()
        .filter(|c| c.is_redis())
        .map(bullmq::Category::as_str)
        .collect();
    health.metrics.declare_error_categories(
        &crate::error::CATEGORIES,
        &redis_categories,
        &load::CATEGORIES,
    );
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
            async move {
                match res {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        warn!(error = %e, "watching JobRetry objects failed; not ready until the watch works again");
                        health.readiness.watch_failed();
                    }
                    // error_policy has logged it, in the run's span.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    Err(e @ kube::runtime::controller::Error::ObjectNotFound(_)) => {
                        debug!(error = %e, "object gone before its reconcile")
                    }
                    Err(e) => warn!(error = %e, "controller error"),
                }
            }
        })
        .await;
    info!("controller stopped");
}
