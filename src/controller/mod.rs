//! The JobRetry controller: `run()` wires the watch, `reconcile` drives one object a step,
//! `error_policy` decides how soon to retry.
//!
//! A reconcile reads as a short pipeline (see `reconcile.rs`): load → plan → execute → record;
//! what a slice's result means for the run (status, requeue, events) is the pure state
//! machine's (`machine.rs`).

mod cache;
mod load;
pub mod machine;
mod objects;
pub mod plan;
mod reconcile;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, Store, reflector},
        watcher::{self, watcher},
    },
};
use tracing::{info, warn};

use self::{
    objects::{Memory, ObjectMemory},
    plan::DryScan,
};
use crate::{
    bullmq::{ConnectError, RedisConn, RedisTarget, RetryEngine, Selector},
    config::Config,
    crd::JobRetry,
    error::Error,
    http::Health,
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
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        store: Store<JobRetry>,
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
        }
    }

    /// What the run of object `uid` keeps between reconciles.
    fn memory(&self, uid: &str) -> Memory {
        self.objects.memory(uid)
    }

    /// Keeps `memory` for object `uid` (forgets it when it is empty).
    fn remember(&self, uid: &str, memory: Memory) {
        self.objects.remember(uid, memory);
    }

    /// Keeps the page budget of object `uid`'s selector run.
    fn set_budget(&self, uid: &str, budget: u32) {
        let mut memory = self.memory(uid);
        memory.budget = budget;
        self.remember(uid, memory);
    }

    /// What object `uid`'s selector dry run found so far, if the operator remembers it.
    fn dry_scan(&self, uid: &str) -> Option<DryScan> {
        self.objects.dry_scan(uid)
    }

    /// Keeps (or, with `None`, forgets) what object `uid`'s dry run found.
    fn set_dry_scan(&self, uid: &str, scan: Option<DryScan>) {
        self.objects.set_dry_scan(uid, scan);
    }

    /// Forgets everything kept in memory about object `uid` (deleted, or its run is over).
    fn forget(&self, uid: &str) {
        self.objects.forget(uid);
    }

    /// Forgets the objects that have left the controller's cache (deleted meanwhile).
    pub fn forget_departed(&self) {
        self.objects.retain_cached(&self.store);
    }

    /// Records one more failed reconcile of `uid`; returns the delay before the next try.
    fn backoff(&self, uid: &str) -> Duration {
        let mut memory = self.memory(uid);
        memory.failures = memory.failures.saturating_add(1);
        self.remember(uid, memory);
        machine::backoff(memory.failures)
    }

    /// A connection to `target`: a cached one, or a new one that is then cached.
    async fn connection(&self, target: &RedisTarget) -> Result<RedisConn, ConnectError> {
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
        self.memory(uid)
            .not_before
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// Retries transient errors with backoff; permanent ones wait for the object to change.
fn error_policy(obj: Arc<JobRetry>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %obj.name_any(), namespace = ?obj.namespace(), category = err.category(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(err.category());
    if err.is_transient() {
        Action::requeue(ctx.backoff(&obj.uid().unwrap_or_default()))
    } else {
        Action::await_change()
    }
}

/// How often the memory of objects deleted meanwhile is dropped.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Once the cache is filled, drops now and then what is remembered of objects deleted
/// meanwhile (a delete triggers no reconcile); ends with the controller.
async fn forget_departed(ctx: Weak<Context>) {
    let Some(store) = ctx.upgrade().map(|c| c.store.clone()) else {
        return;
    };
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(FORGET_INTERVAL);
    loop {
        tick.tick().await;
        match ctx.upgrade() {
            Some(ctx) => ctx.forget_departed(),
            None => return,
        }
    }
}

/// Runs the controller until the process is asked to stop; marks `health` ready once the
/// watch runs.
pub async fn run(client: Client, config: Config, health: Arc<Health>) {
    let api: Api<JobRetry> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // The watch cache keeps slimmed objects (cache.rs): memory stays small with many big ones.
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    let watch = watcher(api.clone(), watcher::Config::default().any_semantic()).modify(cache::slim);
    let controller = Controller::for_stream(reflector(writer, watch).applied_objects(), reader)
        .with_config(controller::Config::default().concurrency(config.max_concurrent_runs));
    let ctx = Arc::new(Context::new(
        client,
        config,
        health.metrics.clone(),
        controller.store(),
    ));
    tokio::spawn(forget_departed(Arc::downgrade(&ctx)));
    info!("starting jobretry-operator controller");
    // Ready only once JobRetries can be listed (API reachable, RBAC in place).
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => health.ready.store(true, Ordering::Relaxed),
        Err(e) => {
            warn!(error = %e, "cannot list JobRetry objects; not ready until the watch works")
        }
    }
    controller
        .shutdown_on_signal()
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|res| {
            let health = health.clone();
            async move {
                match res {
                    Ok(_) => health.ready.store(true, Ordering::Relaxed),
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        warn!(error = %e, "watch failed; not ready");
                        health.ready.store(false, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "reconcile outcome"),
                }
            }
        })
        .await;
    info!("controller stopped");
}
