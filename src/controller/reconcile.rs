//! One reconcile of one JobRetry, as a pipeline: load → plan → execute → record.
//!
//! Each reconcile works for at most one status interval, then writes status and requeues, so
//! progress is visible while a run goes on and a suspend or delete stops it between batches.
//! Guarantees: a JobRetry in a terminal phase is never executed again; the status cursor is
//! read from a fresh GET, never from a possibly stale cache.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use tracing::{info, warn};

use super::{Context, load, plan};
use crate::{
    bullmq::{
        BatchRequest, EngineError, QueueKeys, QueueVersion, RedisConn, RedisTarget, Verdict,
        VersionError,
    },
    crd::{JobRetry, JobRetryStatus, phase, reason},
    error::Error,
    status::{self, Stage},
};

/// How long to wait before looking at an unusable Secret again.
const STALLED_RECHECK: Duration = Duration::from_secs(10);

/// The condition reason of a stalled Redis error category.
fn stalled_reason(category: &str) -> &'static str {
    match category {
        "auth" | "permission" => reason::REDIS_ACCESS_DENIED,
        _ => reason::REDIS_REFUSED,
    }
}

/// Reconciles one JobRetry.
pub async fn reconcile(obj: Arc<JobRetry>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconcile_started();
    let ns = obj
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<JobRetry> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(obj) = api.get_opt(&obj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let uid = obj.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let finished = obj
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(phase::is_terminal);
    if obj.metadata.deletion_timestamp.is_some() || finished {
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.wait_for_rate_limit(&uid) {
        return Ok(Action::requeue(wait));
    }
    let mut run = Run {
        status: obj.status.clone().unwrap_or_default(),
        obj,
        api,
        ns,
        uid,
        ctx,
    };
    let (stage_action, stage) = run.step().await?;
    if run.record(&stage).await? == status::Written::Gone {
        return Ok(Action::await_change());
    }
    Ok(stage_action)
}

/// The state of one reconcile of one object.
struct Run {
    obj: JobRetry,
    status: JobRetryStatus,
    api: Api<JobRetry>,
    ns: String,
    uid: String,
    ctx: Arc<Context>,
}

/// A queue ready for batches.
struct OpenQueue {
    target: RedisTarget,
    conn: RedisConn,
    keys: QueueKeys,
    version: QueueVersion,
}

/// A stage whose messages are owned (they may come from Redis or the API).
enum Outcome {
    Running,
    Waiting(&'static str, String, Duration),
    Stalled(&'static str, String),
    Suspended,
    Done,
    Failed(&'static str, String),
}

impl Run {
    /// Load and plan, then execute as many batches as one status interval allows.
    async fn step(&mut self) -> Result<(Action, Outcome), Error> {
        let spec = self.obj.spec.clone();
        if spec.suspend {
            return Ok((Action::await_change(), Outcome::Suspended));
        }
        let ids = match plan::target_ids(&spec) {
            Ok(ids) => ids,
            Err(m) => {
                let failed = Outcome::Failed(reason::SELECTOR_UNSUPPORTED, m);
                return Ok((Action::await_change(), failed));
            }
        };
        let run_key = plan::run_key(&spec, &self.ns, &self.obj.name_any());
        self.status.matched = Some(ids.len() as u64);
        self.status.run_key = Some(run_key.clone());
        let mut q = match self.open_queue().await? {
            Ok(q) => q,
            Err(stop) => return Ok(stop),
        };
        self.status.bullmq_version = Some(q.version.label.clone());
        let req = BatchRequest {
            state: spec.state,
            version: q.version.clone(),
            reset_attempts_made: spec.reset_attempts_made,
            reset_attempts_started: spec.reset_attempts_started,
            dry_run: spec.dry_run,
            ledger: Some((q.keys.ledger(&run_key), self.owner_tag())),
            ledger_ttl: self.ctx.config.ledger_retention(),
        };
        self.execute(&mut q.conn, &q.keys, &q.target, &req, &ids)
            .await
    }

    /// Load step: the Secret, a Redis connection, and the queue's version. `Ok(Err(..))` is
    /// why the run cannot go on now (with the action and outcome to record).
    async fn open_queue(&self) -> Result<Result<OpenQueue, (Action, Outcome)>, Error> {
        let spec = &self.obj.spec;
        let target = match load::redis_target(&self.ctx.client, &self.ns, &spec.connection).await {
            Ok(t) => t,
            Err(load::LoadError::Invalid(m)) => {
                let stalled = Outcome::Stalled(reason::SECRET_INVALID, m);
                return Ok(Err((Action::requeue(STALLED_RECHECK), stalled)));
            }
            Err(load::LoadError::Kube(e)) => return Err(e.into()),
        };
        let mut conn = match self.ctx.connection(&target).await {
            Ok(c) => c,
            Err(e) => {
                self.ctx.metrics.redis_failed(e.category);
                // Nothing of the queue was touched yet: whatever is not transient is fixed
                // in the Secret, the ACL or the server, so the run waits for it (stalled).
                let verdict = match e.verdict {
                    Verdict::Transient => Verdict::Transient,
                    Verdict::Stalled | Verdict::Permanent => Verdict::Stalled,
                };
                let reason = stalled_reason(e.category);
                return Ok(Err(self.held(verdict, reason, e.message)));
            }
        };
        let keys = QueueKeys::new(&spec.queue.prefix, &spec.queue.name);
        let version = match self.detect_version(&mut conn, &keys).await {
            Ok(Ok(v)) => v,
            Ok(Err((reason, m))) => {
                return Ok(Err((Action::await_change(), Outcome::Failed(reason, m))));
            }
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
    /// that release. `Ok(Err)` is permanent (reason and message), `Err` a Redis error.
    async fn detect_version(
        &self,
        conn: &mut RedisConn,
        keys: &QueueKeys,
    ) -> Result<Result<QueueVersion, (&'static str, String)>, EngineError> {
        let spec = &self.obj.spec;
        let probe = self.ctx.engine.probe(conn, keys, spec.state).await?;
        if !probe.exists {
            return Ok(Err((
                reason::INCOMPATIBLE_QUEUE,
                format!(
                    "queue {:?} with prefix {:?} not found in Redis (neither {} nor {} exists); check spec.queue.name and spec.queue.prefix",
                    spec.queue.name,
                    spec.queue.prefix,
                    keys.key("meta"),
                    keys.key(spec.state.as_str()),
                ),
            )));
        }
        let version = match QueueVersion::resolve(
            spec.queue.bullmq_version.as_deref(),
            probe.meta_version.as_deref(),
        ) {
            Ok(v) => v,
            Err(e @ VersionError::Unknown) => {
                return Ok(Err((reason::VERSION_UNKNOWN, e.to_string())));
            }
            Err(e) => return Ok(Err((reason::INCOMPATIBLE_QUEUE, e.to_string()))),
        };
        Ok(version
            .check_options(spec.reset_attempts_made, spec.reset_attempts_started)
            .map(|()| version)
            .map_err(|m| (reason::INCOMPATIBLE_OPTIONS, m)))
    }

    /// What a failed Redis call means for the run, by what fixes it: time (wait with
    /// backoff), the user fixing Redis or the Secret in place (stalled, rechecked with
    /// backoff), or nothing (the run fails).
    fn engine_failed(&self, e: EngineError, target: &RedisTarget) -> (Action, Outcome) {
        let category = e.category();
        if let EngineError::Redis(_) = e {
            self.ctx.metrics.redis_failed(category);
            self.ctx.drop_connection(target);
        }
        let reason = match &e {
            EngineError::IncompatibleQueue(_) => reason::INCOMPATIBLE_QUEUE,
            EngineError::QueueData(_) => reason::QUEUE_DATA_INVALID,
            EngineError::Redis(_) if e.verdict() == Verdict::Stalled => stalled_reason(category),
            EngineError::Redis(_) | EngineError::Protocol(_) => reason::REDIS_REFUSED,
        };
        self.held(e.verdict(), reason, target.redact(&e.to_string()))
    }

    /// The action and outcome of a run held up by `verdict`.
    fn held(&self, verdict: Verdict, reason: &'static str, message: String) -> (Action, Outcome) {
        match verdict {
            Verdict::Transient => self.waiting(message),
            Verdict::Stalled => (
                Action::requeue(self.ctx.backoff(&self.uid).max(STALLED_RECHECK)),
                Outcome::Stalled(reason, message),
            ),
            Verdict::Permanent => (Action::await_change(), Outcome::Failed(reason, message)),
        }
    }

    /// Runs batches until the run is done, the status interval is used up, the rate limit
    /// asks for a pause, or the object was suspended or deleted meanwhile.
    async fn execute(
        &mut self,
        conn: &mut RedisConn,
        keys: &QueueKeys,
        target: &RedisTarget,
        req: &BatchRequest,
        ids: &[String],
    ) -> Result<(Action, Outcome), Error> {
        let cfg = &self.ctx.config;
        let rate = self
            .obj
            .spec
            .rate_limit
            .as_ref()
            .map_or(0, |r| r.jobs_per_second);
        let size = plan::batch_size(cfg.batch_size, rate);
        let deadline = Instant::now() + cfg.status_interval();
        let tag = self.owner_tag();
        if self.status.start_time.is_none() {
            self.status.start_time = Some(Time(Timestamp::now()));
        }
        loop {
            let batch = plan::next_batch(ids, self.status.processed.unwrap_or(0), size);
            if batch.is_empty() {
                self.ctx.set_not_before(&self.uid, None);
                return Ok((Action::await_change(), Outcome::Done));
            }
            let started = Instant::now();
            let outcomes = match self.ctx.engine.retry_batch(conn, keys, req, batch).await {
                Ok(o) => o,
                Err(e) => return Ok(self.engine_failed(e, target)),
            };
            self.ctx.reset_backoff(&self.uid);
            let rows: Vec<_> = batch
                .iter()
                .zip(&outcomes)
                .map(|(id, o)| status::job_row(id, o, req.state.as_str(), &tag))
                .collect();
            let seconds = started.elapsed().as_secs_f64();
            self.ctx
                .metrics
                .batch_done(seconds, rows.iter().map(|r| r.result.as_str()));
            status::add_rows(&mut self.status, rows, cfg.status_row_limit as usize);
            if rate > 0 {
                let pause = Duration::from_secs_f64(batch.len() as f64 / f64::from(rate));
                self.ctx.set_not_before(&self.uid, Some(started + pause));
                return Ok((Action::requeue(pause), Outcome::Running));
            }
            if Instant::now() >= deadline || self.stopped_meanwhile() {
                return Ok((Action::requeue(Duration::from_millis(10)), Outcome::Running));
            }
        }
    }

    /// Whether the object was suspended, deleted or replaced since this reconcile began,
    /// as the controller's watch cache sees it (no API call per batch).
    fn stopped_meanwhile(&self) -> bool {
        let key = ObjectRef::new(&self.obj.name_any()).within(&self.ns);
        self.ctx.store.get(&key).is_none_or(|o| {
            o.spec.suspend
                || o.metadata.deletion_timestamp.is_some()
                || o.uid().as_deref() != Some(self.uid.as_str())
        })
    }

    fn waiting(&self, message: String) -> (Action, Outcome) {
        let delay = self.ctx.backoff(&self.uid);
        (
            Action::requeue(delay),
            Outcome::Waiting(reason::REDIS_UNAVAILABLE, message, delay),
        )
    }

    /// The tag this object writes into the ledger (a prefix of its uid).
    fn owner_tag(&self) -> String {
        self.uid.chars().filter(|c| *c != '-').take(16).collect()
    }

    /// Writes the status for `outcome` and publishes an event when the phase changes.
    async fn record(&mut self, outcome: &Outcome) -> Result<status::Written, Error> {
        let stage = match outcome {
            Outcome::Running => Stage::Running,
            Outcome::Waiting(r, m, _) => Stage::Waiting {
                reason: r,
                message: m,
            },
            Outcome::Stalled(r, m) => Stage::Stalled {
                reason: r,
                message: m,
            },
            Outcome::Suspended => Stage::Suspended,
            Outcome::Done => Stage::Done,
            Outcome::Failed(r, m) => Stage::Failed {
                reason: r,
                message: m,
            },
        };
        let old = self.obj.status.clone().unwrap_or_default();
        status::apply_stage(
            &mut self.status,
            &stage,
            self.obj.metadata.generation,
            Timestamp::now(),
        );
        let written = status::write(&self.api, &self.obj, &self.status).await?;
        if written == status::Written::Gone {
            info!(name = %self.obj.name_any(), namespace = %self.ns, "object deleted or replaced during the slice; its status is not written");
            self.ctx.set_not_before(&self.uid, None);
            self.ctx.reset_backoff(&self.uid);
            return Ok(written);
        }
        if old.phase == self.status.phase {
            return Ok(written);
        }
        if let Some(p) = self
            .status
            .phase
            .as_deref()
            .filter(|p| phase::is_terminal(p))
        {
            self.ctx.metrics.run_finished(p);
        }
        let started_now = old.start_time.is_none() && self.status.start_time.is_some();
        if started_now && !matches!(outcome, Outcome::Running) {
            self.publish(&Outcome::Running).await;
        }
        self.publish(outcome).await;
        Ok(written)
    }

    async fn publish(&self, outcome: &Outcome) {
        let s = &self.status;
        let (type_, reason, note) = match outcome {
            Outcome::Running => (
                EventType::Normal,
                "Started",
                format!("retrying {} jobs", s.matched.unwrap_or(0)),
            ),
            Outcome::Done => (
                EventType::Normal,
                "Completed",
                format!(
                    "{} of {} jobs retried, {} not",
                    s.retried.unwrap_or(0),
                    s.matched.unwrap_or(0),
                    s.failed.unwrap_or(0)
                ),
            ),
            Outcome::Suspended => (EventType::Normal, "Suspended", "run suspended".to_string()),
            Outcome::Failed(r, m) | Outcome::Stalled(r, m) => (EventType::Warning, *r, m.clone()),
            Outcome::Waiting(r, m, d) => (
                EventType::Warning,
                *r,
                format!("{m}; retrying in {}s", d.as_secs()),
            ),
        };
        info!(name = %self.obj.name_any(), namespace = %self.ns, phase = ?s.phase, %reason, "{note}");
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
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
