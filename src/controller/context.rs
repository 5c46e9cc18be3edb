//! What every reconcile shares: the API client, the watch cache, the leader gate, the
//! per-object memory, the connection and Secret caches, the Redis scripts and the metrics.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::{
    Client,
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
    },
};

use super::{memory::ObjectMemory, secret::SecretCache};
use crate::{
    bullmq::{self, RedisConn, RedisTarget, RetryEngine, Selector},
    config::Config,
    crd::JobRetry,
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
    pub memory: ObjectMemory,
    /// Open Redis connections by target, reused across reconciles and objects.
    connections: Connections,
    /// Runs selector pages.
    pub selector: Selector,
    /// Connection Secrets read in the last seconds.
    pub secrets: SecretCache,
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
        Self {
            recorder: recorder(&client),
            client,
            engine: RetryEngine::default(),
            config,
            metrics,
            store,
            memory: ObjectMemory::default(),
            connections: Connections::default(),
            selector: Selector::default(),
            secrets: SecretCache::default(),
            gate,
        }
    }

    /// A connection to `target`: a cached one, or a new one that is then cached.
    pub async fn connection(&self, target: &RedisTarget) -> Result<RedisConn, bullmq::Error> {
        self.connections.get(target).await
    }

    /// Forgets the cached connection to `target` (after a Redis error).
    pub fn drop_connection(&self, target: &RedisTarget) {
        self.connections.forget(target);
    }
}

/// Open Redis connections by target, reused across reconciles, objects and controllers.
#[derive(Default)]
pub struct Connections(Mutex<HashMap<u64, RedisConn>>);

impl Connections {
    /// A connection to `target`: a cached one, or a new one that is then cached.
    pub async fn get(&self, target: &RedisTarget) -> Result<RedisConn, bullmq::Error> {
        let key = target.cache_key();
        let cached = self.map().get(&key).cloned();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let conn = target.connect().await?;
        self.map().insert(key, conn.clone());
        Ok(conn)
    }

    /// Forgets the cached connection to `target` (after a Redis error).
    pub fn forget(&self, target: &RedisTarget) {
        self.map().remove(&target.cache_key());
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RedisConn>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Event recorder of every controller in this binary: reporting controller
/// `jobretry-operator`, instance the pod's name.
pub fn recorder(client: &Client) -> Recorder {
    let reporter = Reporter {
        controller: "jobretry-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client.clone(), reporter)
}
