//! Load step (IO): every read a reconcile makes before it decides anything. The object from a
//! fresh GET (never the possibly stale cache: the status cursor is read from it), its memory,
//! and, when it may run now, its queue: the Secret, a connection, the queue's version and an
//! id run's recorded position. A queue that cannot be opened is a typed [`RunError`] for the
//! plan, not a failed reconcile; only the Kubernetes API failing is an [`Error`].

use std::time::Instant;

use kube::{Api, Resource, ResourceExt};

use super::{
    context::Context,
    error::{Error, QueueNotFound, RunError},
    memory::Memory,
    secret::{self, LoadError},
};
use crate::{
    bullmq::{self, QueueKeys, QueueVersion, RedisConn, RedisTarget},
    crd::{JobRetry, Phase, policy::JobRetryPolicy},
};

/// What a reconcile read.
pub struct Loaded {
    /// The object, fresh from the API server.
    pub obj: JobRetry,
    pub api: Api<JobRetry>,
    pub ns: String,
    pub uid: String,
    /// `spec.runKey`, else `<namespace>/<name>`.
    pub run_key: String,
    pub memory: Memory,
    /// When it was read: the rate limit's pause is judged at this instant.
    pub at: Instant,
    /// The policy whose run this is, if a JobRetryPolicy controls the object.
    pub policy: Option<PolicyLink>,
}

/// What a policy's run takes from its policy: the per-job retry cap, counted per policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyLink {
    /// The controlling policy, read now: its uid (the per-job counts are kept under it) and
    /// `maxRetriesPerJob` (0: no cap).
    Found {
        uid: String,
        max_retries_per_job: u32,
    },
    /// The object names a controlling policy that is gone (deleted, its runs are being
    /// deleted too) or was replaced: the run does not go on without its cap.
    Gone,
}

/// The object's queue, as far as it was opened.
pub enum Queue {
    /// Not opened: nothing runs now (paused, suspended, not leading, an invalid spec).
    Closed,
    Open(OpenQueue),
    /// It cannot be opened now.
    Failed(RunError),
}

/// A queue ready for batches.
pub struct OpenQueue {
    pub target: RedisTarget,
    pub conn: RedisConn,
    pub keys: QueueKeys,
    pub version: QueueVersion,
    /// The position a real id run's record keeps (0 otherwise).
    pub recorded: u64,
}

impl Loaded {
    /// Whether the operator started this run (its status has a start time): only then is a
    /// record missing or behind the status a lost state rather than a status written by
    /// hand, which is ignored (the record decides where the run stands).
    pub fn started(&self) -> bool {
        let status = self.obj.status.as_ref();
        status.is_some_and(|s| s.start_time.is_some())
    }

    /// The tag this object writes into the ledger (a prefix of its uid).
    pub fn owner_tag(&self) -> String {
        self.uid.chars().filter(|c| *c != '-').take(16).collect()
    }
}

/// Whether the object's run is over (a terminal phase is never left).
pub fn finished(obj: &JobRetry) -> bool {
    Phase::of(obj.status.as_ref()).is_some_and(Phase::is_terminal)
}

/// Reads what a reconcile of `cached` needs; `None`: nothing to do (the run is over or the
/// object is gone), and what was remembered of it is dropped.
pub async fn load(cached: &JobRetry, ctx: &Context) -> Result<Option<(Loaded, Queue)>, Error> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<JobRetry> = Api::namespaced(ctx.client.clone(), &ns);
    // A terminal phase is final: the cached copy saying so spares the API server a GET (the
    // status write that ended a run triggers one more reconcile of every object).
    let fresh = match finished(cached) {
        true => None,
        false => api.get_opt(&cached.name_any()).await?,
    };
    let Some(obj) = fresh.filter(|o| o.metadata.deletion_timestamp.is_none() && !finished(o))
    else {
        ctx.memory.forget(&cached.uid().unwrap_or_default());
        return Ok(None);
    };
    let uid = obj.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let memory = ctx.memory.memory(&uid);
    let run_key = obj.run_key();
    let policy = policy_link(&obj, &ns, ctx).await?;
    let loaded = Loaded {
        obj,
        api,
        ns,
        uid,
        run_key,
        memory,
        at: Instant::now(),
        policy,
    };
    let queue = match may_run(&loaded, ctx) {
        true => open_queue(&loaded, ctx).await?,
        false => Queue::Closed,
    };
    Ok(Some((loaded, queue)))
}

/// Loads an object the watch saw deleted (no reconcile comes for it), with its queue if it
/// was a started selector run, whose lock it may hold.
pub async fn deleted(obj: JobRetry, ctx: &Context) -> Result<Option<(Loaded, Queue)>, Error> {
    let (Some(ns), Some(uid)) = (obj.namespace(), obj.uid()) else {
        return Ok(None);
    };
    let api = Api::namespaced(ctx.client.clone(), &ns);
    let memory = Memory::default();
    let run_key = obj.run_key();
    let loaded = Loaded {
        obj,
        api,
        ns,
        uid,
        run_key,
        memory,
        at: Instant::now(),
        policy: None,
    };
    let queue = match may_hold_lock(&loaded) && ctx.gate.holds() {
        true => open_queue(&loaded, ctx).await?,
        false => Queue::Closed,
    };
    Ok(Some((loaded, queue)))
}

/// The policy that controls `obj` (its controller owner reference names a JobRetryPolicy),
/// read afresh: its cap may change between slices. `None`: no policy controls it.
async fn policy_link(obj: &JobRetry, ns: &str, ctx: &Context) -> Result<Option<PolicyLink>, Error> {
    let kind = JobRetryPolicy::kind(&());
    let owner = obj
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind);
    let Some(owner) = owner else {
        return Ok(None);
    };
    let api: Api<JobRetryPolicy> = Api::namespaced(ctx.client.clone(), ns);
    Ok(Some(match api.get_opt(&owner.name).await? {
        Some(p) if p.uid().as_deref() == Some(owner.uid.as_str()) => PolicyLink::Found {
            uid: owner.uid.clone(),
            max_retries_per_job: p.spec.max_retries_per_job,
        },
        _ => PolicyLink::Gone,
    }))
}

/// Whether the object's queue is opened now: this replica leads, the rate limit's pause is
/// over and the spec names ids or a selector; a suspended run only to give back its lock.
fn may_run(loaded: &Loaded, ctx: &Context) -> bool {
    let spec = &loaded.obj.spec;
    let paused = loaded.memory.not_before.is_some_and(|t| t > loaded.at);
    let planned = spec.job_ids.is_some() != spec.selector.is_some();
    let needed = !spec.suspend || holds_lock(loaded);
    // A policy's run whose policy is gone waits (for the garbage collector): without the
    // policy's cap it could retry jobs the policy parked.
    let capped = loaded.policy != Some(PolicyLink::Gone);
    ctx.gate.holds() && !paused && planned && needed && capped
}

/// Whether the object's run may hold its queue's lock: a real selector run that started.
pub fn holds_lock(loaded: &Loaded) -> bool {
    loaded.started() && may_hold_lock(loaded)
}

/// Whether the object's run may hold its queue's lock, even if its status does not show it
/// started: its first slice takes the lock with its first page, before that status is
/// written (and an object deleted meanwhile never gets it written).
fn may_hold_lock(loaded: &Loaded) -> bool {
    let spec = &loaded.obj.spec;
    spec.selector.is_some() && !spec.dry_run && !finished(&loaded.obj)
}

/// The Secret, a connection, the queue's version, and a real id run's recorded position.
async fn open_queue(loaded: &Loaded, ctx: &Context) -> Result<Queue, Error> {
    let spec = &loaded.obj.spec;
    let label = ctx.config.secret_label.as_ref();
    let read = secret::redis_target(
        &ctx.secrets,
        &ctx.client,
        &loaded.ns,
        &spec.connection,
        label,
        !loaded.started(),
    );
    let target = match read.await {
        Ok(t) => t,
        Err(e) => {
            ctx.metrics.secret_failed(e.category());
            return match e {
                LoadError::Secret(e) => Ok(Queue::Failed(e.into())),
                LoadError::Kube(e) => Err(e.into()),
            };
        }
    };
    let mut conn = match ctx.connection(&target).await {
        Ok(c) => c,
        Err(e) => {
            ctx.metrics.redis_failed(e.category());
            return Ok(Queue::Failed(RunError::Connect(e)));
        }
    };
    let keys = QueueKeys::new(&spec.queue.prefix, &spec.queue.name);
    let opened = async {
        let version = detect_version(loaded, ctx, &mut conn, &keys, &target).await?;
        let recorded = recorded_position(loaded, ctx, &mut conn, &keys, &target).await?;
        Ok::<_, RunError>((version, recorded))
    };
    Ok(match opened.await {
        Ok((version, recorded)) => Queue::Open(OpenQueue {
            target,
            conn,
            keys,
            version,
            recorded,
        }),
        Err(e) => Queue::Failed(e),
    })
}

/// A failed call on the queue; a Redis failure's connection is dropped (the next reconcile
/// opens a new one).
fn call_failed(e: bullmq::Error, ctx: &Context, target: &RedisTarget) -> RunError {
    if e.is_redis() {
        ctx.metrics.redis_failed(e.category());
        ctx.drop_connection(target);
    }
    RunError::Redis(e)
}

/// Probes the queue and resolves its version, then checks the spec's options against it.
async fn detect_version(
    loaded: &Loaded,
    ctx: &Context,
    conn: &mut RedisConn,
    keys: &QueueKeys,
    target: &RedisTarget,
) -> Result<QueueVersion, RunError> {
    let spec = &loaded.obj.spec;
    let probe = ctx.engine.probe(conn, keys, spec.state).await;
    let probe = probe.map_err(|e| call_failed(e, ctx, target))?;
    if !probe.exists {
        return Err(RunError::QueueNotFound(QueueNotFound {
            name: spec.queue.name.clone(),
            prefix: spec.queue.prefix.clone(),
            meta_key: keys.key("meta"),
            state_key: keys.key(spec.state.as_str()),
        }));
    }
    let given = spec.queue.bullmq_version.as_deref();
    let version =
        QueueVersion::resolve(given, probe.meta_version.as_deref()).map_err(RunError::Version)?;
    version
        .check_options(spec.reset_attempts_made, spec.reset_attempts_started)
        .map_err(RunError::IncompatibleOptions)?;
    Ok(version)
}

/// The position a real id run's record keeps (written with each batch); 0 for other runs.
async fn recorded_position(
    loaded: &Loaded,
    ctx: &Context,
    conn: &mut RedisConn,
    keys: &QueueKeys,
    target: &RedisTarget,
) -> Result<u64, RunError> {
    let spec = &loaded.obj.spec;
    if spec.job_ids.is_none() || spec.dry_run {
        return Ok(0);
    }
    let record = keys.record(&loaded.run_key);
    let tag = loaded.owner_tag();
    let position = ctx.engine.recorded_position(conn, &record, &tag);
    position.await.map_err(|e| call_failed(e, ctx, target))
}
