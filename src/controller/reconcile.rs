//! One reconcile of one JobRetry, as a pipeline: load → plan → execute → record. This is the
//! IO shell around the pure state machine (`machine.rs`): it loads the Secret and the queue,
//! runs batches and reports what happened as a [`Slice`]; the machine turns that into the
//! next status, requeue and events, which the shell writes and publishes.
//!
//! Each reconcile works for at most one status interval, then writes status and requeues, so
//! progress is visible while a run goes on and a suspend or delete stops it between batches.
//! Guarantees: a JobRetry in a terminal phase is never executed again; the status cursor is
//! read from a fresh GET, never from a possibly stale cache; a slice's status is written only
//! to the object it was computed for, never to one re-created under the same name.

use std::{sync::Arc, time::Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use tracing::{Instrument, info, warn};

mod selector;

use super::{
    Context, Memory, load,
    machine::{self, Facts, Milestone, Requeue, RunError, Slice, SliceResult},
    plan, run_span,
};
use crate::{
    bullmq::{
        self, BatchRequest, Ledger, QueueKeys, QueueVersion, RedisConn, RedisTarget, Verdict,
        VersionError,
    },
    crd::{JobRetry, SelectionStatus, phase},
    error::{Error, quoted},
    metrics::Script,
    status,
};

/// The run error of a Redis error category that waits for the user.
fn stalled(category: &str, message: String) -> RunError {
    match category {
        "auth" | "permission" => RunError::RedisAccessDenied(message),
        _ => RunError::RedisConnectionRefused(message),
    }
}

/// Reconciles one JobRetry, in its run's span (every line it logs names the object and its
/// run key), timing it.
pub async fn reconcile(obj: Arc<JobRetry>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A follower does nothing; when it starts to lead it reconciles every object again.
    if !ctx.gate.holds() {
        return Ok(Action::await_change());
    }
    ctx.metrics.reconcile_started();
    let started = Instant::now();
    let span = run_span(&obj);
    let result = reconcile_once(obj, ctx.clone()).instrument(span).await;
    ctx.metrics.reconcile_done(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_once(obj: Arc<JobRetry>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<JobRetry> = Api::namespaced(ctx.client.clone(), &ns);
    // A terminal phase is final: the cached copy saying so spares the API server a GET (the
    // status write that ended a run triggers one more reconcile of every object).
    if finished(&obj) {
        ctx.objects.forget(&obj.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let Some(obj) = api.get_opt(&obj.name_any()).await? else {
        ctx.objects.forget(&obj.uid().unwrap_or_default());
        return Ok(Action::await_change());
    };
    let uid = obj.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    if obj.metadata.deletion_timestamp.is_some() || finished(&obj) {
        ctx.objects.forget(&uid);
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.wait_for_rate_limit(&uid) {
        return Ok(Action::requeue(wait));
    }
    let mut run = Run::new(obj, api, ns, uid, ctx);
    let mut slice = if run.obj.spec.suspend {
        run.suspended().await
    } else {
        run.slice().await?
    };
    slice.selection = slice.selection.or_else(|| run.frozen_selection());
    run.record(slice).await
}

/// Gives back the queue's lock of a deleted object's selector run, if it held it: a delete
/// triggers no reconcile (the object is gone), so the watch hands deleted objects here.
pub async fn release_deleted(obj: JobRetry, ctx: Arc<Context>) {
    let (Some(ns), Some(uid)) = (obj.namespace(), obj.uid()) else {
        return;
    };
    if finished(&obj) {
        return;
    }
    let span = run_span(&obj);
    let api = Api::namespaced(ctx.client.clone(), &ns);
    let mut run = Run::new(obj, api, ns, uid, ctx);
    run.give_back_lock().instrument(span).await;
}

/// Whether the object's run is over (a terminal phase is never left).
fn finished(obj: &JobRetry) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(phase::is_terminal)
}

/// One reconcile of one object.
struct Run {
    obj: JobRetry,
    api: Api<JobRetry>,
    ns: String,
    uid: String,
    ctx: Arc<Context>,
    /// When the slice's last batch started (the rate limit's pause counts from it).
    last_batch_started: Option<Instant>,
}

/// A queue ready for batches.
struct OpenQueue {
    target: RedisTarget,
    conn: RedisConn,
    keys: QueueKeys,
    version: QueueVersion,
}

impl Run {
    fn new(obj: JobRetry, api: Api<JobRetry>, ns: String, uid: String, ctx: Arc<Context>) -> Self {
        Self {
            obj,
            api,
            ns,
            uid,
            ctx,
            last_batch_started: None,
        }
    }

    /// A selector run's progress as status shows it, with its snapshot bound frozen now if
    /// it is not yet: the first time the operator sees the object, whatever happens next
    /// (waiting for the queue, a suspend, an error), so a later start never widens it.
    fn frozen_selection(&self) -> Option<SelectionStatus> {
        let sel = self.obj.spec.selector.as_ref()?;
        let old = self.obj.status.as_ref().and_then(|s| s.selection.clone());
        let old = old.unwrap_or_default();
        let frozen = old.upper_bound.as_ref().map(|t| t.0.as_millisecond());
        let before = sel.finished_before.as_ref().map(plan::ms_ceil);
        let upper = plan::upper_bound(frozen, before, Timestamp::now().as_millisecond());
        Some(SelectionStatus {
            upper_bound: plan::micro_time(upper),
            ..old
        })
    }

    /// A suspended run: nothing runs, and the queue's lock is given back.
    async fn suspended(&mut self) -> Slice {
        self.give_back_lock().await;
        Slice::ended(SliceResult::Suspended)
    }

    /// A real selector run that had started and stops (suspended, deleted) gives the queue's
    /// lock back, so that the next run need not wait for it to expire.
    async fn give_back_lock(&mut self) {
        let spec = &self.obj.spec;
        if spec.selector.is_none() || spec.dry_run || !self.started() || !self.ctx.gate.holds() {
            return;
        }
        if let Ok(Ok(mut q)) = self.open_queue().await {
            let run_key = plan::run_key(spec, &self.ns, &self.obj.name_any());
            let req = self.batch_request(&q, &run_key);
            self.release_lock(&mut q, &req, &run_key).await;
        }
    }

    /// Whether the operator started this run (its status has a start time): only then is a
    /// record missing or behind the status a lost state rather than a status written by
    /// hand, which is ignored (the record decides where the run stands).
    fn started(&self) -> bool {
        self.obj
            .status
            .as_ref()
            .is_some_and(|s| s.start_time.is_some())
    }

    /// The run's settings for the engine.
    fn batch_request(&self, q: &OpenQueue, run_key: &str) -> BatchRequest {
        let spec = &self.obj.spec;
        BatchRequest {
            state: spec.state,
            version: q.version.clone(),
            reset_attempts_made: spec.reset_attempts_made,
            reset_attempts_started: spec.reset_attempts_started,
            dry_run: spec.dry_run,
            ledger: Ledger {
                key: q.keys.ledger(run_key),
                owner: self.owner_tag(),
            },
            ledger_ttl: self.ctx.config.ledger_retention(),
            record: q.keys.record(run_key),
        }
    }

    /// Load and plan, then execute as many batches (or selector pages) as one status
    /// interval allows.
    async fn slice(&mut self) -> Result<Slice, Error> {
        let spec = self.obj.spec.clone();
        let run_key = plan::run_key(&spec, &self.ns, &self.obj.name_any());
        let ids = match (&spec.job_ids, &spec.selector) {
            (Some(ids), None) => Some(plan::target_ids(ids)),
            (None, Some(_)) => None,
            _ => {
                let e = "exactly one of spec.jobIds and spec.selector must be set".to_string();
                return Ok(Slice::ended(SliceResult::Error(
                    RunError::SelectorUnsupported(e),
                )));
            }
        };
        let mut slice = Slice {
            matched: ids.as_ref().map(|ids| ids.len() as u64),
            run_key: Some(run_key.clone()),
            ..Slice::ended(SliceResult::Done)
        };
        // Ask again before the queue is opened (the object was read from the API meanwhile).
        if !self.ctx.gate.holds() {
            slice.result = SliceResult::Batches { last_batch: 0 };
            return Ok(slice);
        }
        let mut q = match self.open_queue().await? {
            Ok(q) => q,
            Err(e) => {
                slice.result = SliceResult::Error(e);
                return Ok(slice);
            }
        };
        slice.bullmq_version = Some(q.version.label.clone());
        let req = self.batch_request(&q, &run_key);
        match (ids, &spec.selector) {
            (Some(ids), _) => self.execute(&mut q, &req, &ids, &mut slice).await,
            (None, Some(sel)) => {
                slice.selection = self.frozen_selection();
                self.select(sel, &mut q, &req, &run_key, &mut slice).await
            }
            (None, None) => {}
        }
        Ok(slice)
    }

    /// Load step: the Secret, a Redis connection, and the queue's version. `Ok(Err(..))` is
    /// why the run cannot go on now.
    async fn open_queue(&self) -> Result<Result<OpenQueue, RunError>, Error> {
        let spec = &self.obj.spec;
        let label = self.ctx.config.secret_label.as_ref();
        let target = match load::redis_target(
            &self.ctx.secrets,
            &self.ctx.client,
            &self.ns,
            &spec.connection,
            label,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                self.ctx.metrics.secret_failed(e.category());
                return match e {
                    load::LoadError::Invalid { message, .. } => {
                        Ok(Err(RunError::SecretInvalid(message)))
                    }
                    load::LoadError::Forbidden(message) => {
                        Ok(Err(RunError::SecretForbidden(message)))
                    }
                    load::LoadError::Kube(e) => Err(e.into()),
                };
            }
        };
        let mut conn = match self.ctx.connection(&target).await {
            Ok(c) => c,
            Err(e) => {
                self.ctx.metrics.redis_failed(e.category().as_str());
                // Nothing of the queue was touched yet: whatever is not transient is fixed
                // in the Secret, the ACL or the server, so the run waits for it (stalled).
                let (category, message) = (e.category().as_str(), e.to_string());
                return Ok(Err(match e.verdict() {
                    Verdict::Transient => RunError::RedisUnavailable(message),
                    Verdict::Stalled | Verdict::Permanent => stalled(category, message),
                }));
            }
        };
        let keys = QueueKeys::new(&spec.queue.prefix, &spec.queue.name);
        let version = match self.detect_version(&mut conn, &keys).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Ok(Err(self.engine_failed(e, &target))),
        };
        Ok(Ok(OpenQueue {
            target,
            conn,
            keys,
            version,
        }))
    }

    /// Probes the queue and resolves its version, then checks the spec's options against
    /// that release. `Ok(Err)` is permanent, `Err` a Redis error.
    async fn detect_version(
        &self,
        conn: &mut RedisConn,
        keys: &QueueKeys,
    ) -> Result<Result<QueueVersion, RunError>, bullmq::Error> {
        let spec = &self.obj.spec;
        let probe = self.ctx.engine.probe(conn, keys, spec.state).await?;
        if !probe.exists {
            return Ok(Err(RunError::IncompatibleQueue(format!(
                "queue {} with prefix {} not found in Redis (neither {} nor {} exists); check spec.queue.name and spec.queue.prefix",
                quoted(&spec.queue.name),
                quoted(&spec.queue.prefix),
                keys.key("meta"),
                keys.key(spec.state.as_str()),
            ))));
        }
        let version = match QueueVersion::resolve(
            spec.queue.bullmq_version.as_deref(),
            probe.meta_version.as_deref(),
        ) {
            Ok(v) => v,
            Err(e @ VersionError::Unknown) => {
                return Ok(Err(RunError::VersionUnknown(e.to_string())));
            }
            Err(e) => return Ok(Err(RunError::IncompatibleQueue(e.to_string()))),
        };
        Ok(version
            .check_options(spec.reset_attempts_made, spec.reset_attempts_started)
            .map(|()| version)
            .map_err(RunError::IncompatibleOptions))
    }

    /// What a failed Redis call means for the run, by what fixes it: time (transient), the
    /// user fixing Redis or the Secret in place (stalled), or nothing (the run fails).
    fn engine_failed(&self, e: bullmq::Error, target: &RedisTarget) -> RunError {
        let category = e.category().as_str();
        if e.is_redis() {
            self.ctx.metrics.redis_failed(category);
            self.ctx.drop_connection(target);
        }
        // The layer's errors are scrubbed of the URL's secret.
        let message = e.to_string();
        match (&e, e.verdict()) {
            (_, Verdict::Transient) => RunError::RedisUnavailable(message),
            (bullmq::Error::IncompatibleQueue(_), _) => RunError::IncompatibleQueue(message),
            (bullmq::Error::QueueData(_), _) => RunError::QueueDataInvalid(message),
            (_, Verdict::Stalled) if e.is_redis() => stalled(category, message),
            _ => RunError::RedisRefused(message),
        }
    }

    /// Runs batches until the run is done, the status interval is used up, the rate limit
    /// asks for a pause, or the object was suspended or deleted meanwhile; records them in
    /// `slice`.
    async fn execute(
        &mut self,
        q: &mut OpenQueue,
        req: &BatchRequest,
        ids: &[String],
        slice: &mut Slice,
    ) {
        let cfg = &self.ctx.config;
        let rate = self.jobs_per_second();
        let size = plan::batch_size(cfg.batch_size, rate);
        let deadline = Instant::now() + cfg.status_interval();
        let tag = self.owner_tag();
        // Where the run stands. The status may be behind the record in Redis (written with
        // each batch) after a crash lost a status write: the run then replays from the status,
        // which the ledger makes harmless and which brings back the lost rows. It may not be
        // ahead of it: then the record was lost (the Secret now points at other data, or Redis
        // lost acknowledged writes) and the run stops rather than retry those ids again or
        // claim a success. A dry run records nothing and keeps its position in status.
        let in_status = self
            .obj
            .status
            .as_ref()
            .and_then(|s| s.processed)
            .unwrap_or(0);
        let before = if req.dry_run {
            in_status
        } else {
            match self
                .ctx
                .engine
                .recorded_position(&mut q.conn, &req.record, &tag)
                .await
            {
                Ok(p) => match plan::id_position(p, in_status, self.started()) {
                    Ok(at) => at,
                    Err(lost) => {
                        let says = format!("{in_status} jobs were processed");
                        let has = format!("the run's record, which covers {p}");
                        let m = plan::lost_state(&says, &has, lost);
                        slice.result = SliceResult::Error(RunError::RunStateLost(m));
                        return;
                    }
                },
                Err(e) => {
                    slice.result = SliceResult::Error(self.engine_failed(e, &q.target));
                    return;
                }
            }
        };
        slice.processed_before = Some(before);
        loop {
            let done = before + slice.rows.len() as u64;
            let batch = plan::next_batch(ids, done, size);
            if batch.is_empty() {
                slice.result = SliceResult::Done;
                return;
            }
            if let Err(e) = self.check_master(q).await {
                slice.result = SliceResult::Error(e);
                return;
            }
            let started = Instant::now();
            let after = done + batch.len() as u64;
            let outcomes = match self
                .ctx
                .engine
                .retry_batch(&mut q.conn, &q.keys, req, batch, after)
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    slice.result = SliceResult::Error(self.engine_failed(e, &q.target));
                    return;
                }
            };
            let rows: Vec<_> = batch
                .iter()
                .zip(&outcomes)
                .map(|(id, o)| status::job_row(id, o, req.state.as_str()))
                .collect();
            let seconds = started.elapsed().as_secs_f64();
            self.ctx.metrics.batch_done(
                Script::Retry,
                seconds,
                rows.iter().map(|r| r.result.as_str()),
            );
            slice.rows.extend(rows);
            self.last_batch_started = Some(started);
            if rate > 0 || Instant::now() >= deadline || self.stopped_meanwhile() {
                slice.result = SliceResult::Batches {
                    last_batch: batch.len(),
                };
                return;
            }
        }
    }

    /// Before each batch or page: a Sentinel failover since the connection opened makes the
    /// run reconnect to the new master rather than write to the old one (whose writes the
    /// new master never sees). Transient: the next slice opens the new master, where the
    /// run's record shows whether anything acknowledged was lost.
    async fn check_master(&self, q: &mut OpenQueue) -> Result<(), RunError> {
        match q.conn.master_moved().await {
            Ok(None) => Ok(()),
            Ok(Some((was, now))) => {
                info!(%was, %now, "the Sentinel's master moved; reconnecting");
                self.ctx.drop_connection(&q.target);
                Err(RunError::RedisUnavailable(format!(
                    "the Sentinel's master moved from {was} to {now}; reconnecting to the new master"
                )))
            }
            Err(e) => Err(self.engine_failed(e, &q.target)),
        }
    }

    fn jobs_per_second(&self) -> u32 {
        let limit = self.obj.spec.rate_limit.as_ref();
        limit.map_or(0, |r| r.jobs_per_second)
    }

    /// Whether the object was suspended, deleted or replaced since this reconcile began,
    /// as the controller's watch cache sees it (no API call per batch), or this replica lost
    /// the Lease or is shutting down.
    fn stopped_meanwhile(&self) -> bool {
        self.ctx.gate.should_pause() || self.object_stopped()
    }

    /// Whether the object was suspended, deleted or replaced since this reconcile began.
    fn object_stopped(&self) -> bool {
        let key = ObjectRef::new(&self.obj.name_any()).within(&self.ns);
        self.ctx.store.get(&key).is_none_or(|o| {
            o.spec.suspend
                || o.metadata.deletion_timestamp.is_some()
                || o.uid().as_deref() != Some(self.uid.as_str())
        })
    }

    /// The tag this object writes into the ledger (a prefix of its uid).
    fn owner_tag(&self) -> String {
        self.uid.chars().filter(|c| *c != '-').take(16).collect()
    }

    /// Record step: the state machine's transition for `slice`, written to the object (only
    /// to this object: not to one re-created under its name), then its events.
    async fn record(&mut self, slice: Slice) -> Result<Action, Error> {
        let old = self.obj.status.clone().unwrap_or_default();
        let facts = Facts::new(
            &self.obj.spec,
            self.obj.metadata.generation,
            self.ctx.config.status_row_limit as usize,
        );
        let failures = self.ctx.objects.memory(&self.uid).failures;
        let t = machine::step(&old, failures, &facts, slice, Timestamp::now());
        if !self.ctx.gate.holds() {
            // Another replica may lead by now: its status wins; this slice's rows are in the
            // Redis record, from which the leader's next slice brings them back.
            warn!("lost the leader Lease: status not written");
            return Ok(Action::await_change());
        }
        let written = status::write(&self.api, &self.obj, &t.status).await?;
        if written == status::Written::Gone {
            info!("object deleted or replaced during the slice; its status is not written");
            self.ctx.objects.forget(&self.uid);
            return Ok(Action::await_change());
        }
        let finished = t.status.phase.as_deref().filter(|p| phase::is_terminal(p));
        let not_before = match t.requeue {
            Requeue::Pause(d) => Some(self.last_batch_started.unwrap_or_else(Instant::now) + d),
            _ => None,
        };
        let memory = Memory {
            failures: t.failures,
            not_before,
            budget: self.ctx.objects.memory(&self.uid).budget,
        };
        self.ctx.objects.remember(
            &self.uid,
            if finished.is_some() {
                Memory::default()
            } else {
                memory
            },
        );
        if let Some(p) = finished.filter(|_| old.phase != t.status.phase) {
            self.ctx.metrics.run_finished(p);
        }
        for m in &t.events {
            self.publish(m, t.status.phase.as_deref()).await;
        }
        Ok(match t.requeue {
            Requeue::AwaitChange => Action::await_change(),
            Requeue::After(d) | Requeue::Pause(d) => Action::requeue(d),
        })
    }

    async fn publish(&self, m: &Milestone, phase: Option<&str>) {
        let phase = phase.unwrap_or("");
        if m.warning {
            warn!(phase, reason = %m.reason, "{}", m.note);
        } else {
            info!(phase, reason = %m.reason, "{}", m.note);
        }
        let event = Event {
            type_: if m.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: m.reason.to_string(),
            note: Some(m.note.clone()),
            action: "Retry".into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&event, &self.obj.object_ref(&()))
            .await
        {
            warn!(error = %e, "cannot publish event");
        }
    }
}
